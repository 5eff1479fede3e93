"""Empirical calibration against OHDSI EmpiricalCalibration's published numbers, plus properties and a
simulation showing coverage is restored.

Reference data are the package's own example data sets (`sccs`, `southworthReplication`, Apache-2.0)
and the reference values are those printed in its vignettes and asserted in its testthat suite:
- EmpiricalPCalibrationVignette: fitNull(sccs negatives) = mean 0.7922, sd 0.2834; calibrateP for
  sertraline = 0.8389142.
- test-confidenceIntervalCalibration.R: calibrateConfidenceInterval(sertraline, convertNullToErrorModel(null))
  log RR = -0.0593.
- EmpiricalCiCalibrationVignette: fitSystematicErrorModel(southworth controls) = (-0.066550795,
  0.933292141, 0.187468405, 0.002979502); the calibrated CI for GI bleed = (-0.3117702, -0.733957,
  0.1067054, SE 0.2144587).
- test-asymptoticNull.R: fitNull(c(1, 2), c(0, 0)) has mean 1.5.
R's optimisers (Nelder-Mead, BFGS with default tolerances) stop early, so fitted values agree with R
to about 1e-3; functions of given parameters agree to 1e-5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mercia.analyses.calibration import (
    CalibrationError,
    NullDistribution,
    SystematicErrorModel,
    calibrate_ci,
    calibrate_p,
    expected_absolute_systematic_error,
    fit_null,
    fit_systematic_error_model,
    null_to_error_model,
)
from mercia.errors import MerciaError

SCCS = [  # (ground_truth, log_rr, se_log_rr)
    (0, 0.433902074, 0.761753760),
    (0, 0.636318364, 0.183989199),
    (0, 0.929754897, 0.297980184),
    (0, 1.691927343, 0.595522198),
    (1, 0.732623537, 0.073717085),
    (0, 0.526169060, 0.196719949),
    (0, 0.858189008, 0.130846045),
    (0, 0.800992415, 0.120855794),
    (0, 0.878170151, 0.346239787),
    (0, 0.730451680, 0.139021871),
    (0, 0.776188471, 0.297058794),
    (0, 0.734523595, 0.277883254),
    (0, 1.279632463, 0.262141411),
    (0, 0.531254954, 0.133970460),
    (0, 0.106333278, 0.331148268),
    (0, 0.464246631, 0.138740186),
    (0, 1.243441840, 0.090779785),
    (0, 1.347351819, 0.115971298),
    (0, 0.106333278, 0.331148268),
    (0, -0.647623867, 1.313521167),
    (0, 0.856079306, 0.160921140),
    (0, 1.307924760, 0.194096650),
    (0, 1.163684831, 0.117531482),
    (0, 0.816234687, 0.387381672),
    (0, 0.106333278, 0.331148268),
    (0, 1.506439297, 0.131170755),
    (0, 0.737563397, 0.805616431),
    (0, 0.687849571, 0.061145939),
    (0, 0.629433124, 0.101550543),
    (0, 0.787747645, 0.081931050),
    (0, 0.089599439, 0.551000165),
    (0, 0.704474846, 0.072644490),
    (0, 0.647387346, 0.251797359),
    (0, 0.250665642, 0.233063132),
    (0, 1.938194097, 0.805018223),
    (0, 1.119246873, 0.145833796),
    (0, 0.380414394, 0.131097471),
    (0, 0.571386224, 0.676474602),
    (0, 0.521790656, 0.126716424),
    (0, 1.021801577, 0.311065514),
    (0, 0.473702289, 0.503351731),
    (0, 0.796144677, 0.647582367),
    (0, 0.893591869, 0.375996948),
    (0, 1.029418911, 0.141659470),
    (0, -0.853082264, 0.809950296),
    (0, 1.127486037, 0.573010088),
]
SOUTHWORTH_CONTROLS = [  # (true RR, log_rr, se_log_rr)
    (4, 1.146696116, 0.033247081),
    (2, 0.553928294, 0.039599797),
    (1, -0.100155081, 0.050051055),
    (1.5, 0.288802516, 0.043446156),
    (1, 0.018546043, 0.080241941),
    (4, 1.351996997, 0.053272277),
    (2, 0.691890327, 0.063571768),
    (1.5, 0.427273606, 0.069327383),
    (1, -0.143483421, 0.110845765),
    (1.5, 0.265212649, 0.094996957),
    (4, 1.218239091, 0.071099922),
    (2, 0.549663330, 0.086247417),
    (1, -0.036274826, 0.089983879),
    (4, 1.310173046, 0.058849383),
    (1.5, 0.369190168, 0.077512112),
    (2, 0.647452949, 0.070666602),
    (1.5, 0.200020614, 0.053922660),
    (2, 0.481871581, 0.048908049),
    (4, 1.094510633, 0.040850018),
    (1, -0.206502109, 0.063020835),
    (4, 0.860720002, 0.026256071),
    (1.5, 0.122488174, 0.033364920),
    (2, 0.368032565, 0.030646325),
    (1, -0.253088264, 0.038586925),
    (2, 0.039261157, 0.053652443),
    (4, 0.692491579, 0.042743609),
    (1.5, -0.234032144, 0.059596614),
    (1, -0.645227957, 0.070831249),
    (2, 0.559233173, 0.056376618),
    (4, 1.194978430, 0.047020390),
    (1.5, 0.285231217, 0.061896699),
    (1, -0.113463309, 0.071939690),
    (2, 0.901433458, 0.063919164),
    (4, 1.546377834, 0.054467019),
    (1.5, 0.617665503, 0.069728987),
    (1, 0.219982529, 0.079949287),
    (1, -0.404179935, 0.134273220),
    (1, -0.051064992, 0.097129647),
    (2, 0.638425683, 0.076108176),
    (4, 1.298049184, 0.063266755),
    (1.5, 0.356830134, 0.083546776),
    (4, 1.358001098, 0.033506559),
    (2, 0.816897453, 0.038632210),
    (1, 0.134541987, 0.048847490),
    (1.5, 0.534625807, 0.042415707),
    (2, 0.246117233, 0.063008140),
    (1, -0.447029837, 0.082628168),
    (1.5, -0.026526841, 0.069837603),
    (4, 0.936419062, 0.050616876),
    (2, 0.488869717, 0.071872279),
    (1, -0.200846878, 0.092716494),
    (4, 1.157667443, 0.059127537),
    (1.5, 0.200041526, 0.079509199),
    (2, 0.432919405, 0.050878908),
    (1.5, 0.157379691, 0.055967630),
    (1, -0.244642901, 0.065300207),
    (4, 1.068599652, 0.041952770),
    (2, 0.778463634, 0.043773177),
    (1.5, 0.499214094, 0.047667942),
    (1, 0.078364200, 0.055516026),
    (4, 1.375953857, 0.037334602),
    (2, 0.487864736, 0.044557305),
    (1, -0.184393768, 0.057099655),
    (1.5, 0.215023781, 0.049054748),
    (4, 1.097830910, 0.037150792),
    (1, 0.036792267, 0.179716422),
    (4, 1.417998465, 0.067013837),
    (1.5, 0.450936639, 0.087880748),
    (2, 0.742517181, 0.079988037),
    (1, 0.045471671, 0.101594143),
    (1, -0.101411255, 0.140356432),
    (1.5, 0.540356665, 0.046001055),
    (4, 1.378989193, 0.036307668),
    (1, 0.148146161, 0.052825691),
    (2, 0.806387376, 0.042270894),
    (1, 0.195065550, 0.061484926),
    (4, 1.478145009, 0.042211611),
    (2, 0.861618803, 0.049339376),
    (1.5, 0.598687166, 0.053421652),
    (1.5, 0.397382552, 0.038229482),
    (2, 0.644211144, 0.035378619),
    (4, 1.188308590, 0.030264571),
    (1, 0.006910310, 0.044108579),
    (2, 0.395793056, 0.033822755),
    (1, -0.253901578, 0.042959795),
    (4, 0.935745913, 0.028647648),
    (1.5, 0.137783758, 0.036970944),
    (2, 0.934549675, 0.036586348),
    (1.5, 0.679877380, 0.039436742),
    (4, 1.463082571, 0.031970408),
    (1, 0.298056516, 0.044919513),
    (1.5, 0.335520091, 0.053715306),
    (2, 0.599743651, 0.049137889),
    (4, 1.226492539, 0.041083255),
    (1, -0.065920775, 0.062355288),
    (2, 0.803070696, 0.063876112),
    (1, 0.122015874, 0.080365823),
    (4, 1.442487699, 0.054169913),
    (1.5, 0.527480825, 0.069547432),
    (1, -0.080784533, 0.057413628),
    (2, 0.594203812, 0.045168441),
    (1.5, 0.316938539, 0.049571269),
    (4, 1.201290819, 0.037848173),
    (1, -0.450907194, 0.419619320),
    (4, 1.288166642, 0.041582007),
    (1.5, 0.398740083, 0.053971790),
    (2, 0.675823964, 0.049193288),
    (1, -0.003717434, 0.062492006),
    (1, 0.088548751, 0.048481300),
    (4, 1.303240792, 0.033319686),
    (2, 0.749376968, 0.038709417),
    (1.5, 0.480972683, 0.042187575),
    (1.5, 0.207227780, 0.038753799),
    (1, -0.180650910, 0.044688675),
    (2, 0.477008640, 0.035304008),
    (4, 1.031214371, 0.029744020),
    (1.5, 0.400754774, 0.040722285),
    (1, 0.013950178, 0.046882576),
    (2, 0.662416258, 0.037460995),
    (4, 1.228288896, 0.031887916),
    (2, 0.266659525, 0.054576900),
    (1, -0.422259226, 0.071316617),
    (4, 0.919822762, 0.044214909),
    (1.5, -0.021022445, 0.060712914),
    (2, 0.938860345, 0.060039320),
    (4, 1.565280093, 0.051517154),
    (1.5, 0.642948077, 0.065731126),
    (1, 0.245713473, 0.075273211),
    (2, 0.467337903, 0.039342046),
    (1, -0.183076421, 0.049969148),
    (1.5, 0.206324062, 0.043094522),
    (4, 1.059388725, 0.032838836),
    (1, 0.089137526, 0.140260075),
    (2, 0.398867390, 0.052002188),
    (4, 1.038971389, 0.042879971),
    (1.5, 0.095065944, 0.058114796),
    (1, -0.335716942, 0.068655507),
    (2, 0.957793707, 0.077659311),
    (1, 0.271380857, 0.096780901),
    (4, 1.614822217, 0.066315719),
    (1.5, 0.679080229, 0.084438324),
    (1, -0.263018085, 0.110725759),
    (2, 0.430129098, 0.085345653),
    (4, 1.090568318, 0.069859357),
    (1.5, 0.139141228, 0.094723780),
    (1.5, 0.263930811, 0.070139237),
    (1, -0.138019290, 0.081631877),
    (4, 1.206629735, 0.052690631),
    (2, 0.552492738, 0.063631810),
    (4, 1.248950489, 0.048347493),
    (1, -0.069409294, 0.073684366),
    (1.5, 0.336055760, 0.063492230),
    (2, 0.602323496, 0.057888241),
    (1, -0.432890875, 0.178094926),
    (1, -0.056298962, 0.081164565),
    (2, 0.636848059, 0.063470111),
    (1.5, 0.352561646, 0.069756145),
    (4, 1.278969762, 0.053133182),
    (4, 1.079297801, 0.030191529),
    (1.5, 0.270175138, 0.039043809),
    (1, -0.126122854, 0.045253023),
    (2, 0.529283848, 0.035651964),
    (1, -0.441479329, 0.111272863),
    (1, 0.115489291, 0.118392173),
    (2, 0.677616401, 0.071424310),
    (1.5, 0.392055340, 0.078438792),
    (1, -0.015530508, 0.091072513),
    (4, 1.321813770, 0.059889060),
    (1.5, 0.299698441, 0.040501016),
    (4, 1.099247069, 0.031600141),
    (1, -0.109244885, 0.047209424),
    (2, 0.559209624, 0.037088484),
]

GI_BLEED = (-0.357523436812811, 0.0666890317722757)  # southworthReplication's outcome of interest


def _sccs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a = np.array(SCCS)
    neg, pos = a[a[:, 0] == 0], a[a[:, 0] == 1]
    return neg[:, 1], neg[:, 2], pos[:, 1], pos[:, 2]


def _southworth() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.array(SOUTHWORTH_CONTROLS)
    return a[:, 1], a[:, 2], np.log(a[:, 0])


# ----------------------------------------------------------------------------- published references


def test_fit_null_matches_the_p_calibration_vignette() -> None:
    log_rr, se, _, _ = _sccs()
    null = fit_null(log_rr, se)
    assert null.n_controls == 45
    assert null.mean == pytest.approx(0.7922, abs=1e-3)
    assert null.sd == pytest.approx(0.2834, abs=1e-3)


def test_calibrated_p_for_sertraline_matches_the_vignette() -> None:
    log_rr, se, pos_rr, pos_se = _sccs()
    p = calibrate_p(fit_null(log_rr, se), pos_rr, pos_se)
    assert p[0] == pytest.approx(0.8389142, abs=1e-3)
    # the traditional p-value is (numerically) zero, as the vignette prints
    assert 2 * stats.norm.sf(pos_rr[0] / pos_se[0]) < 1e-20


def test_ci_from_a_null_matches_the_r_test() -> None:
    log_rr, se, pos_rr, pos_se = _sccs()
    point, lo, hi, _ = calibrate_ci(null_to_error_model(fit_null(log_rr, se)), pos_rr, pos_se)
    assert point[0] == pytest.approx(-0.0593, abs=1e-3)
    assert lo[0] < point[0] < hi[0]


def test_ease_of_sccs_null_is_close_to_its_mean_as_the_r_test_says() -> None:
    log_rr, se, _, _ = _sccs()
    null = fit_null(log_rr, se)
    assert expected_absolute_systematic_error(null) == pytest.approx(null.mean, rel=1e-3)
    assert expected_absolute_systematic_error(NullDistribution(0.0, 0.0, 1)) == 0.0


def test_ease_is_the_folded_normal_mean() -> None:
    rng = np.random.default_rng(3)
    draws = np.abs(rng.normal(-0.1, 0.3, 400_000))
    assert expected_absolute_systematic_error(NullDistribution(-0.1, 0.3, 10)) == pytest.approx(
        draws.mean(), abs=2e-3
    )


def test_systematic_error_model_matches_the_ci_vignette() -> None:
    log_rr, se, true = _southworth()
    model = fit_systematic_error_model(log_rr, se, true)
    assert model.n_controls == 172 and not model.negative_controls_only
    assert model.mean_intercept == pytest.approx(-0.066550795, abs=1e-4)
    assert model.mean_slope == pytest.approx(0.933292141, abs=1e-4)
    assert model.sd_intercept == pytest.approx(0.187468405, abs=1e-4)
    assert model.sd_slope == pytest.approx(0.002979502, abs=1e-4)
    point, lo, hi, se_cal = calibrate_ci(model, [GI_BLEED[0]], [GI_BLEED[1]])
    assert (point[0], lo[0], hi[0], se_cal[0]) == pytest.approx(
        (-0.3117702, -0.733957, 0.1067054, 0.2144587), abs=1e-4
    )


def test_calibrated_ci_of_the_published_model_matches_r() -> None:
    # R's uniroot stops at its default tolerance, .Machine$double.eps^0.25 = 1.2e-4, so R's bounds are
    # accurate to that; ours are solved to 1e-12
    model = SystematicErrorModel(-0.066550795, 0.933292141, 0.187468405, 0.002979502, 172, False)
    point, lo, hi, se_cal = calibrate_ci(model, [GI_BLEED[0]], [GI_BLEED[1]])
    assert (point[0], lo[0], hi[0], se_cal[0]) == pytest.approx(
        (-0.3117702, -0.733957, 0.1067054, 0.2144587), abs=1.2e-4
    )


def test_fit_null_with_zero_standard_errors_is_the_plain_normal_fit() -> None:
    null = fit_null([1.0, 2.0], [0.0, 0.0])
    assert null.mean == pytest.approx(1.5, abs=1e-6)
    assert null.sd == pytest.approx(0.5, abs=1e-6)


def test_r_calibrate_p_examples_with_a_zero_null() -> None:
    # test-EmpiricalCalibrationUsingAsymptotics.R: with a null of (0, 0) the p-values are traditional
    null = NullDistribution(0.0, 0.0, 2)
    p = calibrate_p(null, [0.1, 0.3, 0.2], [0.05, 0.1, np.nan])
    assert p[:2] == pytest.approx([0.045500266, 0.002699796], abs=1e-8)
    assert math.isnan(p[2])
    one = calibrate_p(null, [0.1, 0.3], [0.05, 0.1], two_sided=False)
    assert one == pytest.approx([0.022750133, 0.001349898], abs=1e-8)
    lower = calibrate_p(null, [0.1, 0.3], [0.05, 0.1], two_sided=False, upper=False)
    assert np.round(lower, 2) == pytest.approx([0.98, 1.00])


def test_negative_controls_only_gives_the_null_as_error_model() -> None:
    log_rr, se, _, _ = _sccs()
    model = fit_systematic_error_model(log_rr, se, np.zeros_like(log_rr))
    null = fit_null(log_rr, se)
    assert model.negative_controls_only
    assert (model.mean_intercept, model.mean_slope, model.sd_intercept, model.sd_slope) == (
        null.mean,
        1.0,
        null.sd,
        0.0,
    )


def test_no_systematic_error_gives_sd_zero() -> None:
    # estimates scattered exactly as their SEs say: the MLE of the extra SD sits on the boundary 0
    se = np.full(7, 0.2)
    log_rr = np.array([-0.1, 0.05, 0.0, 0.02, -0.03, 0.04, 0.01])
    assert fit_null(log_rr, se).sd == 0.0


# ----------------------------------------------------------------------------- bad input


def test_dropped_estimates_warn_like_r() -> None:
    log_rr, se, _, _ = _sccs()
    with pytest.warns(UserWarning, match="missing or infinite"):
        null = fit_null([*log_rr, np.nan, 0.1], [*se, 0.1, np.inf])
    assert null.n_controls == 45
    with pytest.warns(UserWarning, match="log\\(100\\)"):
        assert fit_null([*log_rr, 101.0], [*se, 0.1]).n_controls == 45


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fit_null([0.1, 0.2], [0.1]), "equal length"),
        (lambda: fit_null([], []), "no usable negative-control"),
        (lambda: fit_null([0.1], [-0.1]), "negative"),
        (lambda: fit_null(["a"], [0.1]), "must be numbers"),
        (lambda: fit_null([[0.1, 0.2]], [[0.1, 0.1]]), "one-dimensional"),
        (lambda: calibrate_p((0.0, 0.1), [0.1], [0.1]), "NullDistribution"),
        (lambda: calibrate_p(NullDistribution(0, 0.1, 3), [0.1, 0.3], [0.1]), "equal length"),
        (lambda: fit_systematic_error_model([0.1, 0.2], [0.1, 0.1], [0.5, 0.5]), "same true effect"),
        (lambda: fit_systematic_error_model([0.1, 0.2], [0.1, 0.1], [0.0, np.inf]), "finite"),
        (lambda: fit_systematic_error_model([np.nan], [0.1], [0.0]), "no usable control"),
        (lambda: calibrate_ci(NullDistribution(0, 0.1, 3), [0.1], [0.1], alpha=1.5), "alpha"),
        (lambda: calibrate_ci("model", [0.1], [0.1]), "SystematicErrorModel"),
    ],
)
def test_bad_input_is_a_clear_mercia_error(call, message: str) -> None:
    expect_warning = pytest.warns(UserWarning) if "usable control" in message else _no_warning()
    with expect_warning, pytest.raises(CalibrationError, match=message) as info:
        call()
    assert isinstance(info.value, MerciaError)


class _no_warning:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_missing_estimates_calibrate_to_nan() -> None:
    model = SystematicErrorModel(0.1, 1.0, 0.2, 0.0, 10, True)
    point, lo, hi, se = calibrate_ci(model, [np.nan, 0.3, np.inf], [0.1, np.nan, 0.1])
    assert np.isnan([point, lo, hi, se]).all()


# ----------------------------------------------------------------------------- properties

finite = st.floats(-3, 3, allow_nan=False)
positive_se = st.floats(0.01, 2.0)


@given(x=finite, se=positive_se)
def test_zero_null_gives_traditional_p_and_ci(x: float, se: float) -> None:
    null = NullDistribution(0.0, 0.0, 1)
    assert calibrate_p(null, [x], [se])[0] == pytest.approx(2 * stats.norm.sf(abs(x) / se), abs=1e-12)
    point, lo, hi, se_cal = calibrate_ci(null, [x], [se])
    z = stats.norm.ppf(0.975)
    assert (point[0], lo[0], hi[0], se_cal[0]) == pytest.approx((x, x - z * se, x + z * se, se), abs=1e-8)


@given(x=finite, se=positive_se, mean=finite, sd=st.floats(0, 1))
def test_p_is_a_probability_and_two_sided_is_twice_the_smaller_tail(
    x: float, se: float, mean: float, sd: float
) -> None:
    null = NullDistribution(mean, sd, 5)
    p = calibrate_p(null, [x], [se])[0]
    up = calibrate_p(null, [x], [se], two_sided=False)[0]
    low = calibrate_p(null, [x], [se], two_sided=False, upper=False)[0]
    assert 0 <= p <= 1
    assert up + low == pytest.approx(1.0)
    assert p == pytest.approx(min(1.0, 2 * min(up, low)))


@given(
    x=finite,
    se=positive_se,
    a=st.floats(-1, 1),
    b=st.floats(0.5, 1.5),
    c=st.floats(0, 0.5),
    d=st.floats(0, 0.2),
)
def test_calibrated_interval_is_ordered_and_contains_the_point(
    x: float, se: float, a: float, b: float, c: float, d: float
) -> None:
    model = SystematicErrorModel(a, b, c, d, 10, False)
    point, lo, hi, se_cal = calibrate_ci(model, [x], [se])
    assert lo[0] < point[0] < hi[0]
    # the calibrated interval is never narrower than the traditional one when b <= 1
    if b <= 1:
        assert se_cal[0] >= se * (1 - 1e-9)


@settings(max_examples=40, deadline=None)
@given(
    shift=st.floats(-2, 2),
    data=st.lists(st.tuples(st.floats(-1, 1), st.floats(0.05, 1.0)), min_size=3, max_size=30),
)
def test_shifting_every_estimate_shifts_the_null_mean_only(
    shift: float, data: list[tuple[float, float]]
) -> None:
    log_rr = np.array([d[0] for d in data])
    se = np.array([d[1] for d in data])
    a, b = fit_null(log_rr, se), fit_null(log_rr + shift, se)
    assert b.mean == pytest.approx(a.mean + shift, abs=1e-6)
    assert b.sd == pytest.approx(a.sd, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(data=st.lists(st.tuples(st.floats(-1, 1), st.floats(0.05, 1.0)), min_size=2, max_size=30))
def test_fit_null_is_the_maximum_of_the_likelihood(data: list[tuple[float, float]]) -> None:
    # no point of a fine grid around the fit has a higher likelihood
    log_rr = np.array([d[0] for d in data])
    se = np.array([d[1] for d in data])
    null = fit_null(log_rr, se)

    def nll(m: float, s: float) -> float:
        return float(-stats.norm.logpdf(log_rr, m, np.sqrt(s * s + se * se)).sum())

    best = nll(null.mean, null.sd)
    m, s = np.meshgrid(
        np.linspace(null.mean - 0.2, null.mean + 0.2, 21),
        np.linspace(max(0.0, null.sd - 0.2), null.sd + 0.2, 21),
    )
    m, s = m.ravel()[:, None], s.ravel()[:, None]
    var = s * s + se * se
    grid_nll = 0.5 * np.sum(np.log(2 * np.pi * var) + (log_rr - m) ** 2 / var, axis=1)
    assert best == pytest.approx(nll(null.mean, null.sd))
    assert grid_nll.min() >= best - 1e-7


# ----------------------------------------------------------------------------- simulation


def _simulate(rng: np.random.Generator, true_log_rr: np.ndarray, mean: float, sd: float, se: np.ndarray):
    """Estimates with systematic error N(mean, sd^2) and sampling error se (as R's simulateControls)."""
    return true_log_rr + rng.normal(mean, sd, len(true_log_rr)) + rng.normal(0, se)


def test_calibration_restores_nominal_coverage_and_type_one_error() -> None:
    rng = np.random.default_rng(20260126)
    covered_raw, covered_cal, reject_raw, reject_cal, n = 0, 0, 0, 0, 0
    z = stats.norm.ppf(0.975)
    for _ in range(40):
        se_controls = rng.uniform(0.05, 0.3, 50)
        controls = _simulate(rng, np.zeros(50), 0.25, 0.25, se_controls)
        null = fit_null(controls, se_controls)
        truth = rng.choice(np.log([1.0, 1.5, 2.0]), 50)
        se_new = rng.uniform(0.05, 0.3, 50)
        new = _simulate(rng, truth, 0.25, 0.25, se_new)
        _, lo, hi, _ = calibrate_ci(null, new, se_new)
        covered_cal += int(((lo <= truth) & (truth <= hi)).sum())
        covered_raw += int(((new - z * se_new <= truth) & (truth <= new + z * se_new)).sum())
        is_null = truth == 0
        reject_cal += int((calibrate_p(null, new[is_null], se_new[is_null]) < 0.05).sum())
        reject_raw += int((2 * stats.norm.sf(np.abs(new[is_null]) / se_new[is_null]) < 0.05).sum())
        n += 50
    n_null = n / 3  # about a third are true nulls
    assert covered_raw / n < 0.6  # the uncalibrated intervals miss badly
    assert 0.92 <= covered_cal / n <= 0.98
    assert reject_raw / n_null > 0.3
    assert 0.02 <= reject_cal / n_null <= 0.09


def test_error_model_with_positive_controls_restores_coverage_when_bias_grows_with_effect() -> None:
    # the error's mean shrinks effects towards the null (slope 0.8): a null alone cannot fix that
    rng = np.random.default_rng(7)
    cov_model, cov_null, n = 0, 0, 0
    for _ in range(12):
        true_c = np.repeat(np.log([1.0, 1.5, 2.0, 4.0]), 25)
        se_c = rng.uniform(0.05, 0.2, len(true_c))
        est_c = 0.1 + 0.8 * true_c + rng.normal(0, 0.15, len(true_c)) + rng.normal(0, se_c)
        model = fit_systematic_error_model(est_c, se_c, true_c)
        null = fit_null(est_c[true_c == 0], se_c[true_c == 0])
        truth = np.full(80, math.log(4.0))
        se_new = rng.uniform(0.05, 0.2, 80)
        new = 0.1 + 0.8 * truth + rng.normal(0, 0.15, 80) + rng.normal(0, se_new)
        _, lo, hi, _ = calibrate_ci(model, new, se_new)
        _, lo0, hi0, _ = calibrate_ci(null, new, se_new)
        cov_model += int(((lo <= truth) & (truth <= hi)).sum())
        cov_null += int(((lo0 <= truth) & (truth <= hi0)).sum())
        n += 80
        assert model.mean_slope == pytest.approx(0.8, abs=0.12)
    assert 0.91 <= cov_model / n <= 0.98
    assert cov_null / n < 0.85


def test_calibrate_estimates_on_the_southworth_replication() -> None:
    from mercia.analyses.calibration import calibrate_estimates

    log_rr, se, true = _southworth()
    res = calibrate_estimates([*log_rr, GI_BLEED[0]], [*se, GI_BLEED[1]], [*true, np.nan])
    row = res.table.iloc[-1]
    assert (row["calibrated_log_rr"], row["calibrated_ci_lower"], row["calibrated_ci_upper"]) == pytest.approx(
        (-0.3117702, -0.733957, 0.1067054), abs=1e-4
    )
    assert row["p"] == pytest.approx(2 * stats.norm.sf(abs(GI_BLEED[0] / GI_BLEED[1])))
    negatives = true == 0
    assert res.null == fit_null(log_rr[negatives], se[negatives])
    assert res.table["calibrated_p"].iloc[-1] == calibrate_p(res.null, [GI_BLEED[0]], [GI_BLEED[1]])[0]
    # calibrated controls: about 95% of the intervals cover the truth, far more than uncalibrated
    cal_cover = (res.table["calibrated_ci_lower"] <= res.table["true_log_rr"]) & (
        res.table["true_log_rr"] <= res.table["calibrated_ci_upper"]
    )
    raw_cover = np.abs(log_rr - true) <= 1.96 * se
    assert cal_cover.iloc[:-1].mean() > 0.9 > raw_cover.mean()
    with pytest.raises(CalibrationError, match="no negative controls"):
        calibrate_estimates([0.1, 0.2], [0.1, 0.1], [np.nan, 0.5])

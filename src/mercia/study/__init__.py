"""Study packages: cohorts, analyses and a disclosure policy in one file, run on a CDM.

    pkg = load_package("examples/studies/nsaid_gi_bleed/study.yaml")
    run = run_study(pkg, cdm, "out/leeds", site_policy="opensafely", site="leeds")
"""

from mercia.study.package import StudyPackage, example_package, load_package
from mercia.study.runner import StudyRun, run_study, write_released

__all__ = ["StudyPackage", "StudyRun", "example_package", "load_package", "run_study", "write_released"]

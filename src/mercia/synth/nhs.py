"""Synthetic NHS numbers: 10 digits whose last is a valid modulus-11 check digit.

Numbers are ``9 d2..d8 d9 c``: the first digit is always 9. Real NHS numbers for England and Wales are
issued from 400 000 000 0-499 999 999 9 and 600 000 000 0-708 800 001 9, Northern Ireland's H&C numbers
from 320 000 000 0-399 999 999 9, and 999 000 000 0-999 999 999 9 is NHS Digital's range for test
data; the 9xx range is not issued to patients, so a synthetic number cannot be mistaken for a real
patient's (it can coincide with a test number, which is harmless).

Write person_id = q * 10**7 + r (q in 0..8). ``d2..d8`` encode a bijective scramble of r, and ``d9`` is
the q-th of the valid d9 values counted cyclically from r mod 10: d9 has weight 2, which is invertible
mod 11, so at most one of its ten values gives the invalid remainder and at least nine are valid. So
numbers are unique across a federation whose person_ids are unique (up to 9 * 10**7 persons) and do
not run in order; person_ids below 10**7 (q = 0) get the first valid d9, as before person_ids of 10**7
and more were allowed.
"""

from __future__ import annotations

import numpy as np

from mercia.errors import ConfigError

MAX_PERSON_ID = 90_000_000  # d2..d8 hold 7 digits, d9 one of at least nine valid values
_SCRAMBLE_A = 7_654_321  # coprime to 10**7, so pid -> (A*pid + B) mod 10**7 is a bijection
_SCRAMBLE_B = 3_141_592
_WEIGHTS = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2], dtype=np.int64)


def _weighted_sum(body: np.ndarray) -> np.ndarray:
    """Modulus-11 weighted digit sums of 9-digit bodies (int64 array)."""
    digits = (body[..., None] // 10 ** np.arange(8, -1, -1, dtype=np.int64)) % 10
    return digits @ _WEIGHTS


def check_digit(body: np.ndarray) -> np.ndarray:
    """Check digits for 9-digit bodies (int64 array); 10 marks a body that has no valid check digit."""
    c = 11 - _weighted_sum(body) % 11
    return np.where(c == 11, 0, c)


def is_valid(numbers: np.ndarray) -> np.ndarray:
    """True where a 10-digit number (int64) has a valid modulus-11 check digit."""
    numbers = np.asarray(numbers, dtype=np.int64)
    c = check_digit(numbers // 10)
    return (numbers >= 10**9) & (numbers < 10**10) & (c != 10) & (c == numbers % 10)


def nhs_numbers(person_ids: np.ndarray) -> np.ndarray:
    """One valid synthetic NHS number (int64, 10 digits, first digit 9) per person_id."""
    pid = np.asarray(person_ids, dtype=np.int64)
    if pid.size and (pid.min() < 0 or pid.max() >= MAX_PERSON_ID):
        raise ConfigError(f"synthetic NHS numbers need person_ids in 0..{MAX_PERSON_ID - 1}; "
                          "generate fewer persons or start person_ids lower")
    q, r = np.divmod(pid, 10**7)
    mid = (_SCRAMBLE_A * r + _SCRAMBLE_B) % 10**7
    prefix = (9 * 10**7 + mid) * 10  # d1..d8 then d9 = 0
    best = np.full(pid.shape, -1, dtype=np.int64)
    seen = np.zeros(pid.shape, dtype=np.int64)  # valid d9 values passed so far
    # A d9 that depends on the person (not always 0): the q-th valid one counted from r mod 10.
    start = r % 10
    # d9 has weight 2: the weighted sum of prefix + d9 is that of the prefix plus 2 * d9, and the body
    # has no valid check digit (check_digit's 10) exactly when that sum is 1 mod 11.
    wsum = _weighted_sum(prefix)
    for step in range(10):
        d9 = (start + step) % 10
        valid = (wsum + 2 * d9) % 11 != 1
        best = np.where((best < 0) & valid & (seen == q), d9, best)
        seen += valid
    body = prefix + best
    return body * 10 + check_digit(body)

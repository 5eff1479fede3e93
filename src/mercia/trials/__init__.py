"""Clinical trial planning: eligibility criteria as a cohort, feasibility, recruitment, candidates."""

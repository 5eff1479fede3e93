"""The methods benchmark: negative and injected positive controls, and how well each estimator does on
them (coverage, bias, precision, discrimination)."""

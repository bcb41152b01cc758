"""Evaluation: what the outputs mean.

* `metrics` (sklearn underneath) and `metric_inputs`; `gate_metrics` (the quality gate's);
* `calibrate`: temperature scaling and a sensitivity-targeted operating threshold;
* `regression`: the regressor's cut-offs between grades;
* `report` and `plots`: the metrics files and figures of a split;
* `explain` and `explain_scores`: explanation maps and their scores against lesion masks.

Floor 2: above data and models, below runs.
"""

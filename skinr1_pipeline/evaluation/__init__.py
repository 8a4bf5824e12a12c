"""Evaluation: suite construction (`suites`), scoring and metrics (`metrics`), train/eval overlap (`contamination`)."""

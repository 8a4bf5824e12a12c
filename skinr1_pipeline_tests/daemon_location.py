"""The code location `test_daemon_automation.py` starts `dagster-daemon` on: the project's definitions for the
settings in the environment, with the model steps stood in (`toy_chain.StandInCompute`) so that two passes of the
whole chain fit in a few minutes of two CPU cores. SKINR1_DAEMON_TEST_MODELS=real runs the real toy-scale models
instead (about ten times longer; test_pipeline_e2e.py covers them)."""

import os

from skinr1_pipeline.definitions import build_definitions
from skinr1_pipeline.settings import load_settings
from skinr1_pipeline_tests.toy_chain import StandInCompute

defs = build_definitions(
    load_settings(), compute=None if os.environ.get("SKINR1_DAEMON_TEST_MODELS") == "real" else StandInCompute()
)

"""SkinRationale synthesis: trajectory requests, generators (template now; LLM backends plug in), verification."""

from skinr1_pipeline.synthesis.generators import CallableGenerator, Generator, TemplateGenerator
from skinr1_pipeline.synthesis.pipeline import SynthesisResult, demo_samples, synthesize
from skinr1_pipeline.synthesis.trajectories import (
    TYPES,
    BuildExtras,
    GenerationRequest,
    NotApplicable,
    SamplingParams,
    TrajectoryContext,
)
from skinr1_pipeline.synthesis.verify import REASONS, Verdict, Verifier, VerifyConfig

__all__ = [
    "REASONS",
    "TYPES",
    "BuildExtras",
    "CallableGenerator",
    "GenerationRequest",
    "Generator",
    "NotApplicable",
    "SamplingParams",
    "SynthesisResult",
    "TemplateGenerator",
    "TrajectoryContext",
    "Verdict",
    "Verifier",
    "VerifyConfig",
    "demo_samples",
    "synthesize",
]

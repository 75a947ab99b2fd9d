"""A DSPy program for `make demo` and examples/dspy_optimize.exs: question answering whose
instructions, demos and LM settings are variables of the calling session.

It runs offline with DSPy's DummyLM in follow-examples mode (it answers what a demo with the
same question says). Set DSPEX_DSPY_MODEL (e.g. "openai/gpt-4o-mini", with that provider's
API key in the environment) to run it with a real LM instead.
"""

import os

import dspy
from dspy.utils import DummyLM

from dspex_bridge.dspy import program_tool

_model = os.environ.get("DSPEX_DSPY_MODEL")
dspy.configure(lm=dspy.LM(_model) if _model else DummyLM([], follow_examples=True))

program_tool(dspy.Predict("question -> answer"), name="qa", usage="qa.usage")

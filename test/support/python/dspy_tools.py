"""DSPy programs served through the bridge for the ExUnit tests, with DSPy's DummyLM
(follow_examples: it answers what a demo with the same question says), and a tool that
shows what the LM was given."""

import dspy
from dspy.utils import DummyLM

from dspex_bridge import tool
from dspex_bridge import dspy as bridge_dspy

LM = DummyLM([], follow_examples=True)
dspy.configure(lm=LM)

QA = bridge_dspy.program_tool(
    dspy.Predict("question -> answer"),
    name="qa",
    outputs={"answer": "qa.last_answer"},
    usage="qa.usage",
)


@tool
def qa_trace(ctx, question):
    """Runs qa as the bridge does and returns what its LM received."""
    bound = bridge_dspy.bind(ctx, QA)
    answer = bound(question=question).answer
    entry = bound.lm.history[-1]
    return {
        "answer": answer,
        "system": entry["messages"][0]["content"],
        "model": bound.lm.model,
        "temperature": bound.lm.kwargs.get("temperature"),
        "max_tokens": bound.lm.kwargs.get("max_tokens"),
        "versions": bound.versions,
    }

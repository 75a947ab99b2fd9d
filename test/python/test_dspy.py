"""Tests of dspex_bridge.dspy with the real dspy package and its DummyLM, against an
in-memory session that answers ctx requests as the Elixir side does (the end-to-end runs
through the bridge are in test/dspex/bridge/python_dspy_test.exs)."""

import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "priv", "python"))

import dspy  # noqa: E402
from dspy.utils import DummyLM  # noqa: E402

from dspex_bridge import errors, tools  # noqa: E402
from dspex_bridge import dspy as bridge_dspy  # noqa: E402
from dspex_bridge.context import Context  # noqa: E402


class Session:
    """Variables in a dict, with the reasons the Elixir side answers."""

    def __init__(self):
        self.vars = {}
        self.lock = threading.Lock()
        self.requests = []

    def request(self, op, args):
        self.requests.append(op)
        with self.lock:
            if op == "get_variables":
                return {n: self._map(n) for n in args["names"] if n in self.vars}
            if op == "get_variable":
                self._need(args["name"])
                return self._map(args["name"])
            if op == "set_variable":
                self._need(args["name"])
                var = self.vars[args["name"]]
                if var["type"] == "json" and isinstance(args["value"], set):
                    raise errors.from_reply("invalid_value", "not json")
                var["value"] = args["value"]
                var["version"] += 1
                return self._map(args["name"])
            if op == "register_variable":
                if args["name"] in self.vars:
                    raise errors.from_reply("variable_exists", "exists")
                self.vars[args["name"]] = {"type": args["type"], "value": args["value"], "version": 1,
                                           "constraints": args["constraints"]}
                return self._map(args["name"])
        raise AssertionError(f"unexpected request {op}")

    def _need(self, name):
        if name not in self.vars:
            raise errors.from_reply("variable_not_found", name)

    def _map(self, name):
        v = self.vars[name]
        return {"name": name, "type": v["type"], "value": v["value"], "version": v["version"], "metadata": {}}


def context(session):
    return Context("s1", session.request)


class Parameters(unittest.TestCase):
    def test_names_for_one_predictor_and_for_several(self):
        p = bridge_dspy.Parameters(dspy.Predict("question -> answer"), "qa")
        self.assertEqual(p.variable_names(),
                         ["qa.instructions", "qa.demos", "qa.model", "qa.temperature", "qa.max_tokens"])

        class TwoSteps(dspy.Module):
            def __init__(self):
                super().__init__()
                self.draft = dspy.Predict("question -> draft")
                self.polish = dspy.ChainOfThought("draft -> answer")

        p = bridge_dspy.Parameters(TwoSteps(), "two", lm_settings=["temperature"])
        self.assertEqual(p.variable_names(), ["two.draft.instructions", "two.draft.demos",
                                              "two.polish.predict.instructions", "two.polish.predict.demos",
                                              "two.temperature"])

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            bridge_dspy.Parameters(dspy.Predict("q -> a"), "")
        with self.assertRaises(ValueError):
            bridge_dspy.Parameters(dspy.Predict("q -> a"), "p", lm_settings=["top_k"])
        with self.assertRaises(ValueError):
            bridge_dspy.Parameters(dspy.Module(), "p")


class Register(unittest.TestCase):
    def test_registers_what_is_missing_from_the_module_and_the_lm(self):
        predict = dspy.Predict("question -> answer")
        predict.demos = [dspy.Example(question="1+1?", answer="2")]
        params = bridge_dspy.Parameters(predict, "qa")
        session = Session()
        session.vars["qa.temperature"] = {"type": "float", "value": 0.2, "version": 4, "constraints": {}}
        lm = DummyLM([], follow_examples=True)
        lm.kwargs["temperature"] = 0.7

        out = bridge_dspy.register_parameters(context(session), params, lm)

        self.assertEqual(sorted(out["registered"]), ["qa.demos", "qa.instructions", "qa.max_tokens", "qa.model"])
        self.assertEqual(out["variables"]["qa.temperature"], 0.2)  # left as it was
        self.assertEqual(out["variables"]["qa.demos"], [{"question": "1+1?", "answer": "2"}])
        self.assertEqual(out["variables"]["qa.model"], "dummy")
        self.assertEqual(session.vars["qa.demos"]["type"], "json")
        self.assertEqual(session.vars["qa.temperature"]["version"], 4)
        self.assertEqual(session.vars["qa.model"]["constraints"], {"min_length": 1})
        # Again: nothing more to register.
        self.assertEqual(bridge_dspy.register_parameters(context(session), params, lm)["registered"], [])


class Bind(unittest.TestCase):
    def setUp(self):
        self.lm = DummyLM([], follow_examples=True)
        self.predict = dspy.Predict("question -> answer")
        self.params = bridge_dspy.Parameters(self.predict, "qa")
        self.session = Session()

    def put(self, name, type_, value):
        self.session.vars[name] = {"type": type_, "value": value, "version": 1, "constraints": {}}

    def test_instructions_demos_and_lm_settings_come_from_the_session(self):
        self.put("qa.instructions", "string", "Answer with the number only.")
        self.put("qa.demos", "json", [{"question": "2+2?", "answer": "4"}])
        self.put("qa.temperature", "float", 0.3)
        self.put("qa.model", "string", "dummy-large")

        bound = bridge_dspy.bind(context(self.session), self.params, self.lm)
        prediction = bound(question="2+2?")

        self.assertEqual(prediction.answer, "4")  # DummyLM follows the session's demo
        self.assertEqual(bound.lm.model, "dummy-large")
        self.assertEqual(bound.lm.kwargs["temperature"], 0.3)
        system = bound.lm.history[-1]["messages"][0]["content"]
        self.assertIn("Answer with the number only.", system)
        self.assertEqual(bound.versions["qa.demos"], 1)
        # The module itself is unchanged, and one round trip read every parameter.
        self.assertEqual(self.predict.demos, [])
        self.assertNotIn("number only", self.predict.signature.instructions)
        self.assertEqual(self.session.requests, ["get_variables"])

    def test_missing_variables_leave_the_module_as_it_is(self):
        self.predict.demos = [dspy.Example(question="3+3?", answer="6").with_inputs("question")]
        bound = bridge_dspy.bind(context(self.session), self.params, self.lm)
        self.assertIs(bound.lm, self.lm)
        self.assertEqual(bound(question="3+3?").answer, "6")

    def test_the_same_settings_reuse_one_lm_copy(self):
        self.put("qa.max_tokens", "integer", 64)
        first = bridge_dspy.bind(context(self.session), self.params, self.lm).lm
        second = bridge_dspy.bind(context(self.session), self.params, self.lm).lm
        self.assertIs(first, second)
        self.assertEqual(first.kwargs["max_tokens"], 64)

    def test_wrongly_typed_variables_are_clear_errors(self):
        self.put("qa.demos", "json", {"question": "not a list"})
        with self.assertRaisesRegex(TypeError, "qa.demos"):
            bridge_dspy.bind(context(self.session), self.params, self.lm)
        self.put("qa.demos", "json", [])
        self.put("qa.instructions", "json", 3)
        with self.assertRaisesRegex(TypeError, "qa.instructions"):
            bridge_dspy.bind(context(self.session), self.params, self.lm)

    def test_a_user_module_with_several_predictors_gets_each_its_own(self):
        class TwoSteps(dspy.Module):
            def __init__(self):
                super().__init__()
                self.draft = dspy.Predict("question -> draft")
                self.polish = dspy.ChainOfThought("draft -> answer")

            def forward(self, question):
                return self.polish(draft=self.draft(question=question).draft)

        params = bridge_dspy.Parameters(TwoSteps(), "two")
        self.put("two.draft.demos", "json", [{"question": "q1", "draft": "d1"}])
        self.put("two.polish.predict.demos", "json", [{"draft": "d1", "reasoning": "r", "answer": "A1"}])
        self.put("two.polish.predict.instructions", "string", "Polish the draft.")
        bound = bridge_dspy.bind(context(self.session), params, self.lm)
        prediction = bound(question="q1")
        self.assertEqual((prediction.reasoning, prediction.answer), ("r", "A1"))
        self.assertIn("Polish the draft.", self.lm.history[-1]["messages"][0]["content"])

    def test_lm_settings_without_an_lm(self):
        self.put("qa.temperature", "float", 0.3)
        with dspy.context(lm=None):
            with self.assertRaisesRegex(RuntimeError, "no LM"):
                bridge_dspy.bind(context(self.session), self.params)


class ProgramTool(unittest.TestCase):
    def test_serves_the_program_and_writes_outputs_and_usage(self):
        lm = DummyLM([], follow_examples=True)
        params = bridge_dspy.program_tool(dspy.Predict("question -> answer"), name="dspy_test_qa", lm=lm,
                                          outputs={"answer": "dspy_test_qa.last_answer"},
                                          usage="dspy_test_qa.usage")
        self.assertEqual(params.prefix, "dspy_test_qa")
        run = tools.lookup("dspy_test_qa")
        register = tools.lookup("dspy_test_qa.register_parameters")
        session = Session()
        ctx = context(session)

        self.assertIn("dspy_test_qa.demos", register(ctx)["registered"])
        ctx.set_variable("dspy_test_qa.demos", [{"question": "5+5?", "answer": "10"}])

        self.assertEqual(run(ctx, question="5+5?"), {"answer": "10"})
        self.assertEqual(session.vars["dspy_test_qa.last_answer"]["value"], "10")
        self.assertEqual(session.vars["dspy_test_qa.last_answer"]["type"], "json")
        self.assertIn("dummy", session.vars["dspy_test_qa.usage"]["value"])
        run(ctx, question="5+5?")
        self.assertEqual(session.vars["dspy_test_qa.last_answer"]["version"], 2)

    def test_concurrent_calls_of_different_sessions_see_their_own_demos(self):
        lm = DummyLM([], follow_examples=True)
        params = bridge_dspy.Parameters(dspy.Predict("question -> answer"), "qa")
        sessions = []
        for answer in ["yes", "no"]:
            s = Session()
            s.vars["qa.demos"] = {"type": "json", "value": [{"question": "ok?", "answer": answer}],
                                  "version": 1, "constraints": {}}
            sessions.append((s, answer))
        results = []

        def call(session, expected):
            for _ in range(20):
                got = bridge_dspy.bind(context(session), params, lm)(question="ok?").answer
                results.append(got == expected)

        threads = [threading.Thread(target=call, args=pair) for pair in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(results), 40)
        self.assertTrue(all(results))


if __name__ == "__main__":
    unittest.main()

"""End-to-end: the official `openai` Python package talks to OptiRoute as if it were OpenAI."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))

import openai  # noqa: E402
from gateway import Gateway  # noqa: E402


class OpenAISdkTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = Gateway()
        cls.client = openai.OpenAI(base_url=cls.gw.url + "/v1", api_key="unused-in-demo-mode", max_retries=0)

    @classmethod
    def tearDownClass(cls):
        code = cls.gw.stop()
        assert code == 0, f"gateway exited with {code}"

    def test_models_lists_auto_and_deployments(self):
        ids = [m.id for m in self.client.models.list()]
        self.assertEqual(ids[0], "auto")
        self.assertIn("local", ids)
        self.assertIn("cloud", ids)

    def test_non_streaming(self):
        r = self.client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Say hello"}], temperature=0
        )
        self.assertEqual(r.object, "chat.completion")
        self.assertTrue(r.choices[0].message.content.startswith("[simulated"))
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)

    def test_raw_headers_explain_routing(self):
        raw = self.client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
        self.assertEqual(raw.headers["x-optiroute-tier"], "local")
        self.assertIn(raw.headers["x-optiroute-cache"], ("hit", "miss"))
        self.assertTrue(raw.headers["x-optiroute-route-reason"])

    def test_streaming_with_usage(self):
        stream = self.client.chat.completions.create(
            model="cloud",
            messages=[{"role": "user", "content": "Stream a short answer"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, finish = "", None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
                self.assertEqual(chunk.choices, [])
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        self.assertTrue(text.startswith("[simulated sim-cloud-large]"), text)
        self.assertEqual(finish, "stop")
        self.assertIsNotNone(usage)
        self.assertGreater(usage.completion_tokens, 0)

        # Same request again: served from cache, replayed as a stream with the same text.
        again = self.client.chat.completions.create(
            model="cloud",
            messages=[{"role": "user", "content": "Stream a short answer"}],
            stream=True,
        )
        chunks = list(again)
        self.assertGreater(len(chunks), 3, "a cache hit is replayed as many chunks, not one")
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), text)

    def test_unknown_model_is_a_404(self):
        with self.assertRaises(openai.NotFoundError) as cm:
            self.client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(cm.exception.body["code"], "model_not_found")

    def test_bad_request_names_the_field(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.chat.completions.create(model="auto", messages=[])
        self.assertEqual(cm.exception.body["param"], "messages")


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"{result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)

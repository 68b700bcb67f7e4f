"""A fake OpenAI-compatible judge on 127.0.0.1 for the judge tests (never contacts anything else).

    python tests/judges/fake_judge_server.py PORT_FILE [API_KEY]

POST /v1/chat/completions grades what it is shown, deterministically:
- a FastChat pairwise prompt ("[The Start of Assistant A's Answer]"): the longer answer wins ("[[A]]" or
  "[[B]]"), equal lengths tie ("[[C]]");
- a single-answer prompt: "Rating: [[r]]" with r = 1 + (number of words in the graded answer) % 10;
- AlpacaEval's classifier prompt (outputs "m" and "M", asked with logprobs): the reply "m" or "M" with
  top_logprobs giving P(m) = len(m's output) / (len(m) + len(M)) (both empty: 1/2), as a log-prob judge would.
Markers inside the graded text drive the failure paths: MALFORMED_ALWAYS (a reply without a rating,
every time), MALFORMED_ONCE (malformed the first time this exact prompt is seen), RATE_LIMIT_ONCE
(HTTP 429 with Retry-After: 0 the first time), SERVER_ERROR_ONCE (HTTP 500 the first time), SLOW (sleeps
2 s before answering), PAUSE (sleeps 0.3 s, so that concurrent requests overlap). A wrong or missing
bearer key gets HTTP 401. GET /stats returns the number of chat requests received, so tests can prove the
cache spared a rerun, and the most requests that were ever in flight at once.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"requests": 0, "seen": {}, "in_flight": 0, "max_in_flight": 0}
LOCK = threading.Lock()
API_KEY = sys.argv[2] if len(sys.argv) > 2 else "test-key"


def graded_answer(prompt: str) -> str:
    single = re.search(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", prompt, re.S)
    if single:
        return single.group(1)
    turns = re.findall(r"### Assistant A:\n(.*?)\n\n(?:### User:|<\|The End)", prompt, re.S)
    return turns[-1] if turns else prompt


def alpaca_logprob_reply(prompt: str, model: str | None) -> dict:
    first, second = (len(o) for o in re.findall(r'"output": """(.*?)"""\n    \}', prompt, re.S))
    p_first = first / (first + second) if first + second else 0.5
    # log 0 is not JSON: a token the judge would never say gets -100.
    top = [{"token": t, "logprob": math.log(p) if p > 0 else -100.0, "bytes": list(t.encode())}
           for t, p in (("m", p_first), ("M", 1 - p_first))]
    token = "m" if p_first >= 0.5 else "M"
    return {"id": "fake", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": token}, "finish_reason": "length",
                         "logprobs": {"content": [{"token": token, "logprob": top[0 if token == "m" else 1]["logprob"],
                                                   "bytes": list(token.encode()), "top_logprobs": top}]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                self._send(200, {"requests": STATE["requests"], "max_in_flight": STATE["max_in_flight"]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        with LOCK:
            STATE["in_flight"] += 1
            STATE["max_in_flight"] = max(STATE["max_in_flight"], STATE["in_flight"])
        try:
            self._post()
        finally:
            with LOCK:
                STATE["in_flight"] -= 1

    def _post(self):
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        length = int(self.headers.get("Content-Length", 0))
        request = json.loads(self.rfile.read(length))
        with LOCK:
            STATE["requests"] += 1
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self._send(401, {"error": {"message": "invalid api key"}})
            return
        prompt = request["messages"][-1]["content"]
        with LOCK:
            seen = STATE["seen"].get(prompt, 0)
            STATE["seen"][prompt] = seen + 1
        if "SLOW" in prompt:
            time.sleep(2)
        if "PAUSE" in prompt:
            time.sleep(0.3)
        if "RATE_LIMIT_ONCE" in prompt and seen == 0:
            self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})
            return
        if "SERVER_ERROR_ONCE" in prompt and seen == 0:
            self._send(500, {"error": {"message": "boom"}})
            return
        if request.get("logprobs") and '"model_identifier": "M"' in prompt:
            self._send(200, alpaca_logprob_reply(prompt, request.get("model")))
            return
        if "MALFORMED_ALWAYS" in prompt or ("MALFORMED_ONCE" in prompt and seen == 0):
            reply = "Both answers have merit; I would rather not give a number."
        elif "[The Start of Assistant A's Answer]" in prompt:
            a = re.search(r"\[The Start of Assistant A's Answer\]\n(.*?)\n\[The End of Assistant A's Answer\]", prompt, re.S)
            b = re.search(r"\[The Start of Assistant B's Answer\]\n(.*?)\n\[The End of Assistant B's Answer\]", prompt, re.S)
            la, lb = len(a.group(1)), len(b.group(1))
            reply = "The longer one is better. " + ("[[A]]" if la > lb else "[[B]]" if lb > la else "[[C]]")
        else:
            words = len(graded_answer(prompt).split())
            reply = f"Fine. Rating: [[{1 + words % 10}]]"
        self._send(200, {"id": "fake", "object": "chat.completion", "model": request.get("model"),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                      "finish_reason": "stop"}]})


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[1] + ".tmp", "w") as fh:
        fh.write(str(server.server_address[1]))
    import os

    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()

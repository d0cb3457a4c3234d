"""The official `anthropic` SDK against weir: one JSON object on stdout.

argv: base URL of a gateway (no rate limit), base URL of a gateway whose
rate limit allows one request per second, and the API key for both.
"""
import json
import sys
import time

import anthropic

base, limited, key = sys.argv[1], sys.argv[2], sys.argv[3]
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
ask = [{"role": "user", "content": "hello there"}]
out = {}

m = client.messages.create(model="m", max_tokens=8, messages=ask)
out["plain"] = {"type": m.type, "role": m.role, "text": m.content[0].text,
                "stop_reason": m.stop_reason, "input": m.usage.input_tokens,
                "output": m.usage.output_tokens}

m = client.messages.create(model="m", max_tokens=8, messages=ask,
                           system="You are terse and you answer in one word only.")
out["system"] = {"text": m.content[0].text, "input": m.usage.input_tokens}

weather = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
m = client.messages.create(model="m", max_tokens=16, messages=ask, tools=[weather],
                           tool_choice={"type": "tool", "name": "get_weather"})
block = next(b for b in m.content if b.type == "tool_use")
out["tools"] = {"stop_reason": m.stop_reason, "name": block.name, "id": block.id,
                "input_is_dict": isinstance(block.input, dict)}

with client.messages.stream(model="m", max_tokens=6, messages=ask) as s:
    deltas = list(s.text_stream)
    final = s.get_final_message()
out["stream"] = {"deltas": deltas, "text": final.content[0].text,
                 "stop_reason": final.stop_reason, "input": final.usage.input_tokens,
                 "output": final.usage.output_tokens}

try:
    client.messages.create(model="no-such-model", max_tokens=8, messages=ask)
    out["not_found"] = "returned"
except anthropic.NotFoundError as e:
    out["not_found"] = {"status": e.status_code, "message": e.message}

once = anthropic.Anthropic(base_url=limited, api_key=key, max_retries=0)
once.messages.create(model="m", max_tokens=4, messages=ask)
try:
    once.messages.create(model="m", max_tokens=4, messages=ask)
    out["rate_limited"] = "returned"
except anthropic.RateLimitError as e:
    out["rate_limited"] = {"status": e.status_code,
                           "retry_after": e.response.headers.get("retry-after"),
                           "type": e.body["error"]["type"] if isinstance(e.body, dict) else None}

# Refused at once, then retried by the SDK after the Retry-After it was given.
patient = anthropic.Anthropic(base_url=limited, api_key=key, max_retries=2)
started = time.monotonic()
m = patient.messages.create(model="m", max_tokens=4, messages=ask)
out["retried"] = {"seconds": time.monotonic() - started, "text": m.content[0].text}

print(json.dumps(out))

"""The official `openai` SDK against weir: one JSON object on stdout.

argv: base URL of a gateway (no rate limit), base URL of a gateway whose
rate limit allows one request per second, and the API key for both.
"""
import json
import sys
import time

import openai

base, limited, key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
ask = [{"role": "user", "content": "hello there"}]
out = {}

r = client.chat.completions.create(model="m", messages=ask, max_tokens=8)
c = r.choices[0]
out["plain"] = {"object": r.object, "text": c.message.content, "finish_reason": c.finish_reason,
                "prompt": r.usage.prompt_tokens, "completion": r.usage.completion_tokens}

r = client.chat.completions.create(model="m", max_tokens=8, messages=[
    {"role": "system", "content": "You are terse and you answer in one word only."}] + ask)
out["system"] = {"text": r.choices[0].message.content, "prompt": r.usage.prompt_tokens}

weather = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
r = client.chat.completions.create(model="m", max_tokens=16, messages=ask, tools=[weather],
                                   tool_choice={"type": "function", "function": {"name": "get_weather"}})
call = r.choices[0].message.tool_calls[0]
out["tools"] = {"finish_reason": r.choices[0].finish_reason, "name": call.function.name,
                "id": call.id, "arguments_are_json": isinstance(json.loads(call.function.arguments), dict)}

stream = client.chat.completions.create(model="m", max_tokens=6, messages=ask, stream=True,
                                        stream_options={"include_usage": True})
deltas, finish, usage = [], None, None
for chunk in stream:
    if chunk.choices:
        if chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = {"prompt": chunk.usage.prompt_tokens, "completion": chunk.usage.completion_tokens}
out["stream"] = {"deltas": deltas, "finish_reason": finish, "usage": usage}

try:
    client.chat.completions.create(model="no-such-model", messages=ask)
    out["not_found"] = "returned"
except openai.NotFoundError as e:
    out["not_found"] = {"status": e.status_code, "message": e.message}

once = openai.OpenAI(base_url=limited, api_key=key, max_retries=0)
once.chat.completions.create(model="m", max_tokens=4, messages=ask)
try:
    once.chat.completions.create(model="m", max_tokens=4, messages=ask)
    out["rate_limited"] = "returned"
except openai.RateLimitError as e:
    out["rate_limited"] = {"status": e.status_code,
                           "retry_after": e.response.headers.get("retry-after")}

patient = openai.OpenAI(base_url=limited, api_key=key, max_retries=2)
started = time.monotonic()
r = patient.chat.completions.create(model="m", max_tokens=4, messages=ask)
out["retried"] = {"seconds": time.monotonic() - started, "text": r.choices[0].message.content}

print(json.dumps(out))

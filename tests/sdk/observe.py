"""What an official SDK observed while calling tollgate: shared by the client scripts.

A script is run as `.venv/bin/python tests/sdk/<sdk>_client.py PLAN`, where PLAN is a JSON
object `{"base_url": "...", "cases": [{"name", "key", "op", "args", "max_retries"}, ...]}`
(a case may set its own `base_url`). It runs the cases in order and prints one JSON object,
`{"results": [...]}`, one entry per case:

- `ok`: whether the call returned; `value`: what it returned (`to_dict()` of the SDK's
  object, or the list of stream events);
- `error`: the exception the SDK raised (`class`, `module`, `status`, `code`, `type`,
  `body`, `request_id`, `message`);
- `request_id`: of the answer, as the SDK reads it;
- `attempts`: every HTTP request the SDK sent for the case (status and the headers that
  decide retries), counted by event hooks on the SDK's own HTTP client;
- `stalled`: the SDK was still waiting (to retry) after `STALL_SECONDS`; the call was
  interrupted so that the other cases still run.
"""

import json
import signal
import sys
import traceback

# Long enough for any retry a test expects (tollgate's retry-after is a second or two);
# a call still going after it is waiting for something a test never wants.
STALL_SECONDS = 20

# Answer headers that matter to a client deciding whether and when to retry.
HEADERS = (
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "x-request-id",
    "request-id",
    "x-tollgate-budget-reset",
    "content-type",
    "www-authenticate",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
)


class Stalled(Exception):
    pass


class Attempts:
    """Event hooks for the SDK's HTTP client: one entry per request it sends."""

    def __init__(self):
        self.log = []

    def on_request(self, request):
        self.log.append({"method": request.method, "path": request.url.path, "status": None})

    def on_response(self, response):
        entry = self.log[-1] if self.log else {}
        entry["status"] = response.status_code
        entry["headers"] = {
            name: response.headers[name] for name in HEADERS if name in response.headers
        }

    def hooks(self):
        return {"request": [self.on_request], "response": [self.on_response]}


def http_client(sdk, attempts):
    """The SDK's own default HTTP client (its timeouts and limits) with the hooks; no proxy
    from the environment, as the tests talk to loopback only."""
    return sdk.DefaultHttpxClient(event_hooks=attempts.hooks(), trust_env=False)


def to_plain(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def error_of(e):
    return {
        "class": type(e).__name__,
        "module": type(e).__module__.split(".")[0],
        "status": getattr(e, "status_code", None),
        "code": getattr(e, "code", None),
        "type": getattr(e, "type", None),
        "body": getattr(e, "body", None),
        "request_id": getattr(e, "request_id", None),
        "message": str(e),
    }


def _alarm(signum, frame):
    raise Stalled()


def run(plan, make_client, ops):
    """Runs every case of `plan` with `ops[case["op"]](client, args) -> (value, request_id)`
    and prints the results as one JSON object."""
    signal.signal(signal.SIGALRM, _alarm)
    results = []
    for case in plan["cases"]:
        attempts = Attempts()
        client = make_client(
            base_url=case.get("base_url", plan["base_url"]),
            api_key=case["key"],
            max_retries=case.get("max_retries", 0),
            attempts=attempts,
        )
        result = {"name": case["name"], "ok": False, "stalled": False}
        signal.alarm(STALL_SECONDS)
        try:
            value, request_id = ops[case["op"]](client, case.get("args", {}))
            result.update(ok=True, value=value, request_id=request_id)
        except Stalled:
            result["stalled"] = True
        except Exception as e:  # the SDK's exception is the observation
            result["error"] = error_of(e)
            result["request_id"] = getattr(e, "request_id", None)
            if not hasattr(e, "status_code"):
                result["error"]["traceback"] = traceback.format_exc()
        finally:
            signal.alarm(0)
        result["attempts"] = attempts.log
        results.append(result)
        client.close()
    json.dump({"results": results}, sys.stdout, default=str)
    sys.stdout.write("\n")


def plan_from_argv():
    return json.loads(sys.argv[1])

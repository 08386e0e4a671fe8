"""The official Anthropic Python SDK as a client; see observe.py for the plan and the output.

Ops: `messages` (messages.create with `args`; with `stream: true` every event is read, and
the usage an application would add up, input from `message_start` and output from the last
`message_delta`, is reported), and `post` (`{"path", "body"}`: the SDK's low-level call, for
a body its typed method cannot send, such as one without `model`).
"""

import anthropic

import observe


def make_client(base_url, api_key, max_retries, attempts):
    return anthropic.Anthropic(
        base_url=base_url,
        api_key=api_key,
        max_retries=max_retries,
        http_client=observe.http_client(anthropic, attempts),
    )


def messages(client, args):
    if not args.get("stream"):
        message = client.messages.create(**args)
        return message.to_dict(), message._request_id
    stream = client.messages.create(**args)
    events, usage = [], {}
    for event in stream:
        events.append(event.to_dict())
        if event.type == "message_start":
            usage["input_tokens"] = event.message.usage.input_tokens
        elif event.type == "message_delta":
            usage["output_tokens"] = event.usage.output_tokens
    value = {"events": events, "usage": usage}
    return value, stream.response.headers.get("request-id")


def post(client, args):
    answer = client.post(args["path"], body=args.get("body"), cast_to=object)
    return answer, None


if __name__ == "__main__":
    observe.run(observe.plan_from_argv(), make_client, {"messages": messages, "post": post})

"""The official OpenAI Python SDK as a client; see observe.py for the plan and the output.

Ops: `chat` (chat.completions.create with `args`; with `stream: true` every chunk is read
as an application would: `chunk.choices[0]`), `embeddings`, `models`, and `post`/`get`
(`{"path", "body"}`: the SDK's low-level call, for requests its typed methods cannot make,
such as a body without `model`).
"""

import openai

import observe


def make_client(base_url, api_key, max_retries, attempts):
    return openai.OpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=max_retries,
        http_client=observe.http_client(openai, attempts),
    )


def chat(client, args):
    if not args.get("stream"):
        completion = client.chat.completions.create(**args)
        return completion.to_dict(), completion._request_id
    stream = client.chat.completions.create(**args)
    chunks, choice_errors, usage = [], [], []
    for chunk in stream:
        chunks.append(chunk.to_dict())
        try:
            chunk.choices[0]
        except IndexError as e:
            choice_errors.append(repr(e))
        if chunk.usage is not None:
            usage.append(chunk.usage.to_dict())
    value = {"chunks": chunks, "choice_errors": choice_errors, "usage": usage}
    return value, stream.response.headers.get("x-request-id")


def embeddings(client, args):
    answer = client.embeddings.create(**args)
    return answer.to_dict(), answer._request_id


def models(client, args):
    page = client.models.list()
    return [m.id for m in page.data], None


def post(client, args):
    answer = client.post(args["path"], body=args.get("body"), cast_to=object)
    return answer, None


def get(client, args):
    answer = client.get(args["path"], cast_to=object)
    return answer, None


if __name__ == "__main__":
    observe.run(
        observe.plan_from_argv(),
        make_client,
        {"chat": chat, "embeddings": embeddings, "models": models, "post": post, "get": get},
    )

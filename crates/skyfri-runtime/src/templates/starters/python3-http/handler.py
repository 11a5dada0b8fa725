import json


def handle(event, context):
    """Answers one HTTP call. `event` has method, path, query, headers and body (bytes);
    return a dict with statusCode, headers and body (a dict or list is sent as JSON).

    Add packages to requirements.txt: `skyfri build` installs them.
    """
    body = event.body.decode() if isinstance(event.body, bytes) else (event.body or "")
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"method": event.method, "path": event.path, "received": body}),
    }

import json


def handler(event, context):
    """An AWS Lambda handler: an HTTP call arrives as an API Gateway HTTP API (2.0) event."""
    name = event.get("body") or event.get("queryStringParameters", {}).get("name", "world")
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"message": f"Hello, {name}!", "requestId": context.aws_request_id}),
    }

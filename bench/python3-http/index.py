# The entry point of OpenFaaS's python3-http template (openfaas/python-flask-template, MIT),
# the reference of bench/warm.sh: Flask served by waitress (its default 4 threads), the
# handler called as `handle(event, context)`. Unchanged but for the port, which the bench
# picks (of-watchdog's upstream_url; the template's is 5000).
from flask import Flask, request, jsonify
from waitress import serve
import os

from function import handler

app = Flask(__name__)


class Event:
    def __init__(self):
        self.body = request.get_data()
        self.headers = request.headers
        self.method = request.method
        self.query = request.args
        self.path = request.path


class Context:
    def __init__(self):
        self.hostname = os.getenv("HOSTNAME", "localhost")


def format_status_code(res):
    if "statusCode" in res:
        return res["statusCode"]
    return 200


def format_body(res, content_type):
    if content_type == "application/octet-stream":
        return res["body"]
    if "body" not in res:
        return ""
    elif type(res["body"]) == dict:
        return jsonify(res["body"])
    else:
        return str(res["body"])


def format_headers(res):
    if "headers" not in res:
        return []
    elif type(res["headers"]) == dict:
        headers = []
        for key in res["headers"].keys():
            headers.append((key, res["headers"][key]))
        return headers
    return res["headers"]


def get_content_type(res):
    content_type = ""
    if "headers" in res:
        content_type = res["headers"].get("Content-type", "")
    return content_type


def format_response(res):
    if res is None:
        return ("", 200)
    status_code = format_status_code(res)
    content_type = get_content_type(res)
    body = format_body(res, content_type)
    headers = format_headers(res)
    return (body, status_code, headers)


@app.route("/", defaults={"path": ""}, methods=["GET", "PUT", "POST", "PATCH", "DELETE"])
@app.route("/<path:path>", methods=["GET", "PUT", "POST", "PATCH", "DELETE"])
def call_handler(path):
    event = Event()
    context = Context()
    response_data = handler.handle(event, context)
    return format_response(response_data)


if __name__ == "__main__":
    serve(app, host="127.0.0.1", port=int(os.getenv("BENCH_FLASK_PORT", "5000")))

def handle(req):
    """Answers one call. `req` is the request body as text; the return value is the answer.

    Add packages to requirements.txt: `skyfri build` installs them.
    """
    name = req.strip() or "world"
    return "Hello, " + name + "!"

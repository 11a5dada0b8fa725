def handle(req):
    """Greets whoever is named in the body."""
    name = req.strip() or "world"
    return {"message": f"hello, {name}"}

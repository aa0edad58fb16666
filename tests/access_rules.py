"""Project hooks named by the test settings."""


def is_ops(user, notebook):
    return user.username.startswith("ops")


def request_meta(request_or_scope):
    return {"site": "tests"}

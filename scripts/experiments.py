"""What the operator's experiments (scripts/*-experiment.py) share: a free port, order numbers
with their Luhn check digit, and an HTTP call that returns whatever the server answered."""

import json
import socket
import urllib.error
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def luhn(prefix):
    """`prefix` with the digit that makes it pass the Luhn check."""
    total = 0
    for i, d in enumerate(reversed([int(c) for c in prefix])):
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return prefix + str((10 - total % 10) % 10)


def call(method, url, body=None, token=None, content_type="application/json"):
    """(status, headers, body) of one request; status 0 when no answer came (the error's text
    is the body)."""
    data, headers = None, {}
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()
    except OSError as error:
        return 0, {}, str(error).encode()


def start_accrual(bin_dir):
    """Our accrual system from `bin_dir` on a free port, silent: (process, its base URL)."""
    import os
    import subprocess

    port = free_port()
    process = subprocess.Popen(
        [f"{bin_dir}/accrual"],
        env={**os.environ, "RUN_ADDRESS": f"127.0.0.1:{port}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}"

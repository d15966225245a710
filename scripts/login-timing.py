#!/usr/bin/env python3
"""Measures how long sign-ins take for a known login with a wrong password and for an unknown
login, interleaved so that both see the same machine load. The two distributions should be
the same: a difference would tell an attacker which logins exist.

Usage: scripts/login-timing.py BASE_URL [ROUNDS]   (the service must allow unthrottled sign-ins)
"""
import json
import statistics
import sys
import time
import urllib.error
import urllib.request


def post(base, path, body):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status, (time.perf_counter() - started) * 1000


def summary(name, samples):
    samples = sorted(samples)
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    return (f"{name:<28} n={len(samples):<4} min={samples[0]:7.1f} p50={pick(0.5):7.1f} "
            f"p90={pick(0.9):7.1f} max={samples[-1]:7.1f} mean={statistics.mean(samples):7.1f} ms")


def main():
    base = sys.argv[1].rstrip("/")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    login = f"timing-{int(time.time())}"
    status, _ = post(base, "/api/user/register", {"login": login, "password": "right-password"})
    assert status == 200, status
    known, unknown = [], []
    for i in range(rounds):
        status, ms = post(base, "/api/user/login", {"login": login, "password": f"wrong-{i}"})
        assert status == 401, status
        known.append(ms)
        status, ms = post(base, "/api/user/login", {"login": f"nobody-{i}-{login}", "password": f"wrong-{i}"})
        assert status == 401, status
        unknown.append(ms)
    print(summary("known login, wrong password", known))
    print(summary("unknown login", unknown))
    print(f"ratio of medians unknown/known: {statistics.median(unknown) / statistics.median(known):.3f}")


if __name__ == "__main__":
    main()

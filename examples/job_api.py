"""The job API: call a deployed function with plain HTTP and JSON, from any language.

Run it:   crucible run examples/job_api.py

It deploys ``greet`` as the deployment ``job-api-demo``, then calls it with nothing but
HTTP requests (urllib here; each request is printed as the curl command that does the same),
and stops the deployment at the end. A job's input and output are JSON, so the function
must return JSON (dicts, lists, strings, numbers, booleans, None).
"""

from plain_http import Exchange

import crucible

app = crucible.App("job-api-demo")


@app.function(cpu=0.25, timeout=60)
def greet(name: str, punctuation: str = "!") -> dict:
    return {"greeting": f"Hello, {name}{punctuation}", "length": len(name)}


@app.local_entrypoint()
def main():
    app.deploy()  # the job API calls deployments by name
    http = Exchange.from_environment()
    base = "/v1/jobs/job-api-demo/greet"
    try:
        # Submit, then wait for the result: {"input": X} passes X as the one argument.
        job = http.post(f"{base}/run", {"input": "Ada"})
        print("submitted:", job["id"], job["status"])
        done = http.get(f"/v1/jobs/{job['id']}?wait_s=60")
        print("result:", done["status"], done["output"])
        # Or submit and wait in one request, with positional and keyword arguments.
        sync = http.post(f"{base}/runsync", {"args": ["Grace"], "kwargs": {"punctuation": "?"}})
        print("runsync:", sync["status"], sync["output"])
        # A bad request gets a JSON error with a stable code, never a traceback.
        status, error = http.request("POST", f"{base}/run", {"inputs": "typo"})
        print("bad request:", status, error["error"]["code"])
    finally:
        http.post("/v1/deployments/job-api-demo/stop")

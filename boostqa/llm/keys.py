"""API keys from a Databricks secret scope, read on the driver of a scheduled job.

A serverless task gets no secret-backed environment variables, so an endpoint may name its key
as ``api_key_secret: "{{secrets/<scope>/<key>}}"``: when its ``api_key_env`` is unset, the job reads the secret
with the workspace's ``dbutils`` into that variable of the driver process. The executors never see
it, so the calls must go out from the driver: ``llm.calls_from: auto`` (the default) turns into
``driver`` then, and ``executors`` is a configuration error, raised before a row is read. The value
is never printed, logged or put in an exception.
"""

from __future__ import annotations

import os

from boostqa.config import ConfigError


class SecretError(ConfigError):
    """A key cannot come from its secret; the message names the endpoint and the reference, never a value."""


def _workspace_dbutils(environ):
    """The workspace's dbutils inside a Databricks job or notebook (its runtime sets
    DATABRICKS_RUNTIME_VERSION), else None."""
    if not environ.get("DATABRICKS_RUNTIME_VERSION"):
        return None
    try:
        from databricks.sdk.runtime import dbutils  # present on Databricks runtimes and serverless

        return dbutils
    except Exception:  # not on Databricks (or no workspace auth): nothing to read from
        return None


def keys_from_secrets(endpoints: dict, calls_from: str, environ=None, dbutils=None) -> list[str]:
    """Fill each unset ``api_key_env`` whose endpoint names an ``api_key_secret``; returns the
    variables filled. ``endpoints``: name -> EndpointConfig."""
    environ = os.environ if environ is None else environ
    wanted = {n: e for n, e in endpoints.items()
              if e.api_key_secret and e.api_key_env and not environ.get(e.api_key_env)}
    if not wanted:
        return []
    dbutils = dbutils or _workspace_dbutils(environ)
    if dbutils is None:  # not in a workspace: a stage that needs a key names its unset variable at preflight
        return []
    if calls_from == "executors":
        names = ", ".join(sorted(wanted))
        raise SecretError(f"endpoints {names} take their keys from a secret scope on the driver, which the "
                          "executors calling them never see: set llm.calls_from: driver or auto (or export "
                          f"{', '.join(sorted({e.api_key_env for e in wanted.values()}))} on every node)")
    filled = []
    for name, ep in sorted(wanted.items()):
        if environ.get(ep.api_key_env):  # two endpoints sharing one variable: read once
            continue
        scope, key = ep.api_key_secret.strip("{}").split("/")[1:]
        try:
            value = dbutils.secrets.get(scope=scope, key=key)
        except Exception as e:  # the message of a failed read names the reference only
            raise SecretError(f"endpoint {name}: cannot read secret {scope}/{key} ({type(e).__name__}); "
                              "check the scope, the key and the job's permission to read it") from None
        if not value:
            raise SecretError(f"endpoint {name}: secret {scope}/{key} is empty")
        environ[ep.api_key_env] = value
        filled.append(ep.api_key_env)
    return filled

"""One run of a job: its ``job_actions`` in order, as freezer-scheduler runs them.

* After an action failed, the following actions run only if ``mandatory``;
  the run's result is ``fail`` if any action that ran failed.
* ``max_retries`` is the number of attempts (freezer-scheduler's count,
  default 1; 0 is taken as 1), ``max_retries_interval`` the seconds between
  two (default 60).
* An abort stops the run at the next chance (between actions, during the
  wait before a retry, or by ending the freezer-agent process): ``aborted``.
* Each backup document an action returns is recorded once the action has
  succeeded; a recording that fails fails the action (it is not retried:
  the snapshot exists, repeating the action would make another).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from stowkit.corelib.agent import actions
from stowkit.corelib.agent.claims import Result
from stowkit.corelib.errors import StowkitError

LOG = logging.getLogger(__name__)

RunAction = Callable[[actions.Context, Mapping[str, Any]], actions.Outcome]


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def run_job(
    job: Mapping[str, Any],
    ctx: actions.Context,
    record: Callable[[dict[str, Any]], str],
    run_action: RunAction = actions.run,
) -> tuple[str, str]:
    """(result, message) of one run: ``success``, ``fail`` or ``aborted``, and one line."""
    job_id = job.get("job_id", "?")
    result, lines = Result.SUCCESS, []
    for index, job_action in enumerate(job.get("job_actions") or []):
        freezer_action = dict(job_action.get("freezer_action") or {})
        name = freezer_action.get("action") or "backup"
        if ctx.cancel.is_set():
            return Result.ABORTED, "; ".join([*lines, "aborted"])
        if result != Result.SUCCESS and not job_action.get("mandatory", False):
            LOG.warning("job %s: skipping action %d (%s) after a failure", job_id, index, name)
            continue
        tries = max(1, _int(job_action.get("max_retries"), 1))
        pause = max(0, _int(job_action.get("max_retries_interval"), 60))
        for attempt in range(1, tries + 1):
            try:
                outcome = run_action(ctx, freezer_action)
            except StowkitError as err:
                failure = str(err)
            except Exception as err:  # a bug in an action: logged, the job goes on
                LOG.exception("job %s: action %s crashed", job_id, name)
                failure = f"{type(err).__name__}: {err}"
            else:
                failure = ""
                try:
                    for meta in outcome.backups:
                        record(meta)
                except StowkitError as err:
                    failure = f"{outcome.message}, but not recorded: {err}"
                    LOG.error("job %s: action %s: %s", job_id, name, failure)
                    result = Result.FAIL
                    lines.append(f"{name}: {failure}")
                    break
                LOG.info("job %s: action %s: %s", job_id, name, outcome.message)
                lines.append(f"{name}: {outcome.message}")
                break
            if ctx.cancel.is_set():
                return Result.ABORTED, "; ".join([*lines, f"{name}: aborted"])
            LOG.warning(
                "job %s: action %s attempt %d/%d failed: %s", job_id, name, attempt, tries, failure
            )
            if attempt == tries:
                result = Result.FAIL
                lines.append(f"{name}: {failure}")
            elif ctx.cancel.wait(pause):
                return Result.ABORTED, "; ".join([*lines, f"{name}: aborted"])
    return result, "; ".join(lines) or "no actions"

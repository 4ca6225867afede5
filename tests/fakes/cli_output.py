"""What a command printed, read back."""

from __future__ import annotations

import json


def rows(capsys):
    out = capsys.readouterr().out
    return json.loads(out) if out.strip() else []

"""What the launchers share: user errors as one line, tracebacks for bugs.

`run(main)` replaces `absl.app.run(main)`. A mistake in how a command was
asked for (an unknown or bad config value, a busy or foreign workdir, data
that does not fit, a diverged run) is printed as one line, `error: ...`,
and exits with status 2; the traceback is kept for bugs, or for every error
with `--verbose`.
"""

import sys

from absl import app
from absl import flags

from kattn import workdir_lock

flags.DEFINE_bool(
    "verbose", False, "Print the full traceback of every error, not one line."
)

# What a user can cause and mend; anything else is a bug and keeps its
# traceback.
USER_ERRORS = (ValueError, FloatingPointError, OSError, workdir_lock.WorkdirLocked)

EXIT_USER_ERROR = 2


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    _fail(f"{_one_line(error)} (see --help)")
  except (AttributeError, KeyError) as error:
    if "--verbose" in argv:
      raise
    # ml_collections wraps its message (the missing field, with a "Did you
    # mean" suggestion when there is one) in a KeyError in an AttributeError.
    detail = error
    while isinstance(detail, BaseException) and detail.args:
      detail = detail.args[0]
    _fail(
        f"a --config.KEY=VALUE override names no field of the config: no"
        f" field {_one_line(detail)}"
    )
  except (ValueError, TypeError) as error:
    if "--verbose" in argv:
      raise
    _fail(f"bad flag value: {_one_line(error)}")


def run(main) -> None:
  """`absl.app.run(main)`, with user errors printed as one line (exit 2)."""

  def guarded(argv):
    try:
      return main(argv)
    except USER_ERRORS as error:
      if flags.FLAGS.verbose:
        raise
      _fail(_one_line(error))

  app.run(guarded, flags_parser=_parse_flags)

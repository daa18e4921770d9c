"""Experiment configs: one file per experiment, `get_config(arg)` with variants."""


def choose_variants(arg: str, config_name: str, kinds: dict) -> dict:
  """The variant of each kind named in `arg` (`"a,b,c"`), or None.

  Args:
    arg: comma-separated variant names, e.g. `"favor,fashion,runlocal"`.
    config_name: the config file, for error messages.
    kinds: `{kind: names}`, e.g. `{"attention": ("softmax", "favor")}`.

  Returns:
    `{kind: chosen name or None}`.

  Raises:
    ValueError: for an unknown name, or two names of one kind.

  Examples:
    >>> choose_variants("favor", "x.py", {"attention": ("softmax", "favor"),
    ...                                   "size": ("runlocal",)})
    {'attention': 'favor', 'size': None}
  """
  variants = [a for a in (arg or "").split(",") if a]
  valid = [name for names in kinds.values() for name in names]
  unknown = sorted(set(variants) - set(valid))
  if unknown:
    raise ValueError(
        f"Unknown variant(s) {unknown} of {config_name}; valid: {valid}."
    )
  chosen = {}
  for kind, names in kinds.items():
    picked = [v for v in variants if v in names]
    if len(picked) > 1:
      raise ValueError(
          f"Pick at most one {kind} variant of {config_name}; got {picked}."
      )
    chosen[kind] = picked[0] if picked else None
  return chosen

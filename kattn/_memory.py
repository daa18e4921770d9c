"""Peak host memory of the current process."""

import resource
import sys


def peak_rss_bytes() -> int:
  """Peak resident set of this process since it started.

  Linux keeps ru_maxrss across execve, so a subprocess launched by a large
  parent would report the parent's peak; VmHWM belongs to the new address
  space and starts afresh. ru_maxrss is the fallback elsewhere.
  """
  try:
    with open("/proc/self/status") as status:
      for line in status:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  # ru_maxrss is in KiB on Linux, bytes on macOS.
  scale = 1 if sys.platform == "darwin" else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

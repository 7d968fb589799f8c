"""The embedded one-machine pipeline behind `dspark train --local` and `make demo`: a tiny target,
a Mooncake master, the reference capture server and a torchrun trainer, all started, watched and
stopped by one process."""

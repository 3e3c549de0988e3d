"""The fork server's last preload (ppo1.sweep.workers.warm_up): freeze what it imported.

Frozen objects are left out of every garbage collection. The fork server's own exit would
otherwise walk the million objects of torch, mlflow and plotly (~1.2 s after the sweep
process ended, holding its output pipes open), and each worker forked from it inherits them
frozen: its collections while it trains skip them, and leave their memory pages shared.
"""

import gc

gc.freeze()

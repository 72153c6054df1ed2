"""What every pattern's load test shares: provisioning, the open-model driver, the Locust base user.

`provision` and `openmodel` are safe to import anywhere; `lab` imports Locust (which patches the
process for gevent), so only locustfiles import it.
"""

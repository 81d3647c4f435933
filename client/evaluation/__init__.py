"""Site-local use of a model: evaluate, predict, explain and adapt (``m3fm-site``).

Everything here runs at the hospital on its own data; nothing is sent anywhere.
"""

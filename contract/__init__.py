"""The typed vocabulary the orchestrator and the workers share.

Everything that crosses a process boundary or the network is defined here: the job
spec, the result payload a worker sends back, job statuses, CPU-list syntax, the Redis
key names and the Celery settings every participant must agree on. It travels as JSON;
nothing in it is executable. Both sides import this package; neither imports the other.
"""

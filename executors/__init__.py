"""Ways of running jobs, behind one protocol (executors/base.py): here, or on Celery."""

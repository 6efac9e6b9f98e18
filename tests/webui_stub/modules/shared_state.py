"""modules/shared_state.py: State, the job shown in the UI's progress bar; interrupt() sets .interrupted."""
import time


class State:
    def __init__(self):
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.textinfo = None
        self.time_start = None
        self.jobs_begun = []

    def interrupt(self):
        self.interrupted = True

    def begin(self, job: str = "(unknown)"):
        self.job_no = 0
        self.job_count = -1
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job
        self.time_start = time.time()
        self.jobs_begun.append(job)

    def end(self):
        self.job = ""
        self.job_count = 0

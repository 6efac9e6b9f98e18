"""modules/call_queue.py: queue_lock, the lock every generation and training call holds (a FIFOLock there; a
plain Lock has the same acquire/release/context-manager surface)."""
import threading

queue_lock = threading.Lock()


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)
    return f

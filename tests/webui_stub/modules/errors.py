"""modules/errors.py: report(message, *, exc_info=False) prints '*** ' lines to stderr; display(e, task)."""
import sys
import traceback

exception_records = []


def record_exception():
    _, e, tb = sys.exc_info()
    if e is not None:
        exception_records.append((e, tb))


def report(message: str, *, exc_info: bool = False) -> None:
    record_exception()
    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(traceback.format_exc(), file=sys.stderr)
        print("---", file=sys.stderr)


def display(e: Exception, task, *, full_traceback=False):
    record_exception()
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    print(traceback.format_exc(), file=sys.stderr)

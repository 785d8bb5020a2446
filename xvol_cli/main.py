"""The ``xvol`` program around the commands: exit codes, signals and what a run leaves behind.

``main()`` runs one command line of :mod:`xvol_cli.app` and turns its outcome into the exit code: 0 on
success, 1 when a check fails, 2 on bad usage or bad input, 3 on a bug of ours, 128+N on signal N.
"""

from __future__ import annotations

import sys
import traceback

from rich.markup import escape

from xvol_cli import interrupts
from xvol_cli.app import app, console, err_console
from xvol_export import cleanup
from xvol_export.errors import CheckFailed, XvolError


def _run(args: list[str], debug: bool) -> int:
    """Run one command line; print its error, if any; return the exit code. A signal raises
    :class:`xvol_cli.interrupts.Interrupted` through here."""
    try:
        app(args=args, prog_name="xvol")  # standalone: usage errors print and exit 2 themselves
        return 0
    except SystemExit as exit_:
        if exit_.code == 130 and _caused_by_keyboard_interrupt(exit_):  # Typer's answer to a KeyboardInterrupt
            raise interrupts.Interrupted(2) from None
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    except KeyboardInterrupt:  # raised by something other than our handler (which raises Interrupted)
        raise interrupts.Interrupted(2) from None
    except (XvolError, CheckFailed) as err:
        if debug:
            err_console.print(traceback.format_exc(), markup=False)
        message = escape(str(err))
        err_console.print(f"[red]error:[/] {message}" if isinstance(err, XvolError) else f"[red]{message}[/]")
        return err.exit_code
    except Exception as err:  # noqa: BLE001 - a bug of ours: say so plainly
        if debug:
            err_console.print(traceback.format_exc(), markup=False)
        err_console.print(f"[red]internal error:[/] {type(err).__name__}: {escape(str(err))}. "
                          "Re-run with --debug and report it.")
        return 3


def _caused_by_keyboard_interrupt(err: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0 on success, 1 when a check fails, 2 on bad usage or bad input, 128+N on signal N
    (130 SIGINT, 143 SIGTERM, 129 SIGHUP) with one line, ``interrupted (SIGTERM)``, and nothing left behind:
    temporary files unwind with the exception a signal raises, and $TMPDIR is a private folder, removed."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line, like a global flag
        args = ["--debug"] + [a for a in args if a != "--debug"]
    stale: list = []
    previous_reporter = cleanup.set_reporter(stale.extend)
    code, stopped = 3, None
    try:
        try:
            interrupts.catch(cleanup.remove_live)  # from here on a signal unwinds the run (a second: exits at once)
            cleanup.new_run()
            with cleanup.private_tempdir():
                code = _run(args, debug)
        finally:
            interrupts.shield()  # a signal from here on is only remembered
    except interrupts.Interrupted as signal_:
        stopped = signal_
    interrupts.shield()
    try:
        cleanup.remove_live()
        cleanup.set_reporter(previous_reporter)
        stopped = stopped or interrupts.pending()
        if stale:
            err_console.print(cleanup.describe_removed(stale), markup=False, soft_wrap=True)
        if stopped is not None:
            err_console.print(str(stopped), markup=False, highlight=False)
            code = stopped.exit_code
        code = code if isinstance(code, int) else 0
        sys.stderr.flush()
        if stopped is None and not (args == ["--debug"] or not args or {"--help", "-h", "--version"} & set(args)):
            console.print("[green]PASSED[/]" if code == 0 else "[red]FAILED[/]")
    finally:
        interrupts.release()
    sys.exit(code)

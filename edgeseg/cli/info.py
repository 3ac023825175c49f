"""`edgeseg info`: what this machine can run."""

from __future__ import annotations

from edgeseg.cli.output import JSON_OPT, console, show, user_errors


def info(as_json: bool = JSON_OPT) -> None:
    """Versions, devices, and which backends are usable here (and why the others are not)."""
    from edgeseg.info import environment_report

    with user_errors(as_json):
        report = environment_report()
        show(report, as_json, lambda: _print_report(report))


def _print_report(report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    con = console()
    cpu = report["cpu"]
    con.print(f"[bold]edgeseg {report['edgeseg']}[/]  python {report['python']}  {report['platform']}")
    con.print(f"CPU: {cpu['model']}, {cpu['cores']} cores, {cpu['memory_gib']} GiB RAM")
    libs = "  ".join(f"{k} {v}" for k, v in report["libraries"].items() if v)
    con.print(f"libraries: {escape(libs)}", highlight=False)
    table = Table(title="backends")
    for col in ("backend", "usable", "detail", "to enable"):
        table.add_column(col)
    for b in report["backends"]:
        table.add_row(b["name"], "[green]yes[/]" if b["usable"] else "[red]no[/]", escape(b["detail"]),
                      "" if b["usable"] else escape(b["install_hint"]))
    con.print(table)
    for f in report["diagnosis"]["findings"]:
        colour = "red" if f["severity"] == "error" else "yellow"
        con.print(f"[{colour}]{f['severity']}[/]: {escape(f['problem'])}\n  fix: {escape(f['fix'])}", highlight=False)
    for lib in report["optional"]:
        state = escape(lib["detail"] if not lib["version"] else lib["version"] if lib["detail"] == "installed"
                       else f"{lib['version']} ({lib['detail']})")
        con.print(f"{lib['name']}: {state} ({escape(lib['for'])})", highlight=False)

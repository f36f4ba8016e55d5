def main() -> None:
    raise SystemExit("hrmcond: under construction")

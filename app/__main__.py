"""``python -m app fit|validate|test|predict --config configs/<file>.yaml``, ``python -m app export`` (README)."""

import sys

from app.cli import main

if __name__ == "__main__":
    if sys.argv[1:2] == ["export"]:
        from app.export import main as export_main

        export_main(sys.argv[2:])
    else:
        main()

"""genrec's command line: ``python train.py <command> --config <yaml>`` (see ``--help``)."""

from genrec.cli import main

if __name__ == "__main__":
    main()

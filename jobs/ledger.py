"""Job: the ledger stage. spark-submit jobs/ledger.py --profile P --run-id ID"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main("ledger"))

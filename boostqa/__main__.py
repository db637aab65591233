from boostqa.cli import main

main()

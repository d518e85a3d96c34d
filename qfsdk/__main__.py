from qfsdk.cli import main

main()

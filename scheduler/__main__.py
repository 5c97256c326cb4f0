from carnet.scheduler.app import main

main()

#if canImport(Glibc)
    import Glibc
#endif

exit(Command.run(CommandLine.arguments))

/* gcdlcm: greatest common divisor and least common multiple of the integers given as arguments.
 *
 * Arguments are read like atoll() reads them (leading digits count, the rest is ignored). Both results
 * are non-negative; a zero among the numbers makes the LCM zero.
 */
#include <stdio.h>
#include <stdlib.h>

static long long gcd(long long a, long long b) {
    if (a < 0)
        a = -a;
    if (b < 0)
        b = -b;
    while (b != 0) {
        long long t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static long long lcm(long long a, long long b) {
    if (a == 0 || b == 0)
        return 0;
    long long r = a / gcd(a, b) * b;
    return r < 0 ? -r : r;
}

int main(int argc, char **argv) {
    long long g = 0;
    long long l = 1;

    if (argc < 2) {
        printf("usage: %s N...\n", argv[0]);
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        long long v = atoll(argv[i]);
        g = gcd(g, v);
        l = lcm(l, v);
    }
    printf("gcd %lld\n", g);
    printf("lcm %lld\n", l);
    return 0;
}

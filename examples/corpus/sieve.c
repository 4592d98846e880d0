/* sieve: counts the primes up to a limit with a sieve of Eratosthenes and checks the answer.
 *
 * Usage: sieve CASE, where CASE picks one of the limits below. The count and the sum of the primes must
 * agree with plain trial division, and the count with the known value of pi(limit). Exit status 0 means
 * everything agreed; 1 means a mismatch (printed); 2 means there is no such case.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LIMIT 100000

static const int limits[] = {1, 2, 10, 100, 541, 1000, 7919, 10000, 65536, 100000};
static const int known_pi[] = {0, 1, 4, 25, 100, 168, 1000, 1229, 6542, 9592};
#define N_CASES ((int)(sizeof limits / sizeof limits[0]))

static unsigned char composite[MAX_LIMIT + 1];

static int sieve_count(int limit, long long *sum) {
    int count = 0;
    memset(composite, 0, sizeof composite);
    *sum = 0;
    for (int i = 2; i <= limit; i++) {
        if (composite[i])
            continue;
        count++;
        *sum += i;
        for (long long j = (long long)i * i; j <= limit; j += i)
            composite[j] = 1;
    }
    return count;
}

static int is_prime(int n) {
    if (n < 2)
        return 0;
    for (int d = 2; d * d <= n; d++)
        if (n % d == 0)
            return 0;
    return 1;
}

static int trial_count(int limit, long long *sum) {
    int count = 0;
    *sum = 0;
    for (int n = 2; n <= limit; n++) {
        if (is_prime(n)) {
            count++;
            *sum += n;
        }
    }
    return count;
}

int main(int argc, char *argv[]) {
    int k = argc > 1 ? atoi(argv[1]) : 0;
    long long sieve_sum, trial_sum;
    int by_sieve, by_trial;

    if (k < 0 || k >= N_CASES) {
        printf("no case %d (there are %d)\n", k, N_CASES);
        return 2;
    }
    by_sieve = sieve_count(limits[k], &sieve_sum);
    by_trial = trial_count(limits[k], &trial_sum);
    printf("pi(%d) = %d, sum %lld\n", limits[k], by_sieve, sieve_sum);
    if (by_sieve != by_trial || sieve_sum != trial_sum || by_sieve != known_pi[k]) {
        printf("mismatch: sieve %d/%lld, trial division %d/%lld, known %d\n", by_sieve, sieve_sum, by_trial,
               trial_sum, known_pi[k]);
        return 1;
    }
    return 0;
}

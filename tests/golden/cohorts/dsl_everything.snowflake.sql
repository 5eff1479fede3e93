-- DSL: everything
-- parameter d1 = 2010-01-01 (DATE)
-- parameter d2 = 2019-12-31 (DATE)
-- numbered parameters: :1 = d1, :2 = d2
WITH codesets AS (
  SELECT
    codeset_id,
    concept_id
  FROM (
    SELECT
      0 AS codeset_id,
      c.concept_id
    FROM (
      SELECT DISTINCT
        i_set.concept_id
      FROM (
        SELECT
          concept_id
        FROM vocab.concept
        WHERE
          concept_id IN (1118084, 1124300)
        UNION
        SELECT
          c.concept_id
        FROM vocab.concept AS c
        JOIN vocab.concept_ancestor AS ca
          ON c.concept_id = ca.descendant_concept_id
        WHERE
          c.invalid_reason IS NULL AND ca.ancestor_concept_id IN (1118084, 1124300)
      ) AS i_set
    ) AS c
    UNION ALL
    SELECT
      1 AS codeset_id,
      c.concept_id
    FROM (
      SELECT DISTINCT
        i_set.concept_id
      FROM (
        SELECT
          concept_id
        FROM vocab.concept
        WHERE
          concept_id IN (192671)
        UNION
        SELECT
          c.concept_id
        FROM vocab.concept AS c
        JOIN vocab.concept_ancestor AS ca
          ON c.concept_id = ca.descendant_concept_id
        WHERE
          c.invalid_reason IS NULL AND ca.ancestor_concept_id IN (192671)
      ) AS i_set
    ) AS c
    UNION ALL
    SELECT
      2 AS codeset_id,
      c.concept_id
    FROM (
      SELECT DISTINCT
        i_set.concept_id
      FROM (
        SELECT
          concept_id
        FROM vocab.concept
        WHERE
          concept_id IN (9201)
      ) AS i_set
    ) AS c
  ) AS cs
), cohort_primary_events AS (
  SELECT
    P.ordinal AS event_id,
    P.person_id,
    P.start_date,
    P.end_date,
    P.op_start_date,
    P.op_end_date,
    P.visit_occurrence_id
  FROM (
    SELECT
      E.person_id,
      E.start_date,
      E.end_date,
      ROW_NUMBER() OVER (
        PARTITION BY E.person_id
        ORDER BY E.sort_date ASC NULLS FIRST, E.event_id ASC NULLS FIRST, E.criteria_index ASC NULLS FIRST, OP.observation_period_start_date ASC NULLS FIRST
      ) AS ordinal,
      OP.observation_period_start_date AS op_start_date,
      OP.observation_period_end_date AS op_end_date,
      CAST(E.visit_occurrence_id AS BIGINT) AS visit_occurrence_id
    FROM (
      SELECT
        *,
        0 AS criteria_index
      FROM (
        SELECT
          C.person_id,
          C.drug_exposure_id AS event_id,
          C.start_date,
          C.end_date,
          C.visit_occurrence_id AS visit_occurrence_id,
          C.start_date AS sort_date,
          C.drug_concept_id AS domain_concept_id
        FROM (
          SELECT
            de.*,
            de.drug_exposure_start_date AS start_date,
            COALESCE(
              de.drug_exposure_end_date,
              CAST(DATEADD(DAY, de.days_supply, de.drug_exposure_start_date) AS DATE),
              CAST(DATEADD(DAY, 1, de.drug_exposure_start_date) AS DATE)
            ) AS end_date,
            ROW_NUMBER() OVER (
              PARTITION BY de.person_id
              ORDER BY de.drug_exposure_start_date ASC NULLS FIRST, de.drug_exposure_id ASC NULLS FIRST
            ) AS ordinal
          FROM cdm.drug_exposure AS de
          JOIN codesets AS cs
            ON de.drug_concept_id = cs.concept_id AND cs.codeset_id = 0
        ) AS C
        JOIN cdm.person AS P
          ON C.person_id = P.person_id
        WHERE
          C.ordinal = 1 AND YEAR(C.start_date) - P.year_of_birth >= 18
      ) AS q
      UNION ALL
      SELECT
        *,
        1 AS criteria_index
      FROM (
        SELECT
          C.person_id,
          C.condition_occurrence_id AS event_id,
          C.start_date,
          C.end_date,
          C.visit_occurrence_id AS visit_occurrence_id,
          C.start_date AS sort_date,
          C.condition_concept_id AS domain_concept_id
        FROM (
          SELECT
            co.*,
            co.condition_start_date AS start_date,
            COALESCE(co.condition_end_date, CAST(DATEADD(DAY, 1, co.condition_start_date) AS DATE)) AS end_date
          FROM cdm.condition_occurrence AS co
          JOIN codesets AS cs
            ON co.condition_concept_id = cs.concept_id AND cs.codeset_id = 1
        ) AS C
        JOIN cdm.visit_occurrence AS V
          ON C.visit_occurrence_id = V.visit_occurrence_id AND C.person_id = V.person_id
        WHERE
          V.visit_concept_id IN (9201)
      ) AS q
    ) AS E
    JOIN cdm.observation_period AS OP
      ON E.person_id = OP.person_id
      AND E.start_date >= OP.observation_period_start_date
      AND E.start_date <= OP.observation_period_end_date
    WHERE
      CAST(DATEADD(DAY, 365, OP.observation_period_start_date) AS DATE) <= E.start_date
      AND CAST(DATEADD(DAY, 30, E.start_date) AS DATE) <= OP.observation_period_end_date
  ) AS P
), cohort_qualified_events AS (
  SELECT
    QE.person_id,
    QE.event_id,
    QE.start_date,
    QE.end_date,
    QE.op_start_date,
    QE.op_end_date,
    QE.visit_occurrence_id
  FROM (
    SELECT
      pe.person_id,
      pe.event_id,
      pe.start_date,
      pe.end_date,
      pe.op_start_date,
      pe.op_end_date,
      pe.visit_occurrence_id,
      ROW_NUMBER() OVER (
        PARTITION BY pe.person_id
        ORDER BY pe.start_date ASC NULLS FIRST, pe.event_id ASC NULLS FIRST
      ) AS ordinal
    FROM cohort_primary_events AS pe
    JOIN (
      SELECT
        0 AS index_id,
        person_id,
        event_id
      FROM (
        SELECT
          0 AS index_id,
          cc.person_id,
          cc.event_id
        FROM (
          SELECT
            P.person_id,
            P.event_id
          FROM cohort_primary_events AS P
          JOIN (
            SELECT
              C.person_id,
              C.visit_occurrence_id AS event_id,
              C.start_date,
              C.end_date,
              C.visit_occurrence_id AS visit_occurrence_id,
              C.start_date AS sort_date,
              C.visit_concept_id AS domain_concept_id
            FROM (
              SELECT
                vo.*,
                vo.visit_start_date AS start_date,
                vo.visit_end_date AS end_date
              FROM cdm.visit_occurrence AS vo
              JOIN codesets AS cs
                ON vo.visit_concept_id = cs.concept_id AND cs.codeset_id = 2
            ) AS C
          ) AS A
            ON A.person_id = P.person_id
            AND A.start_date >= P.op_start_date
            AND A.start_date <= P.op_end_date
            AND A.start_date >= CAST(DATEADD(DAY, -30, P.start_date) AS DATE)
            AND A.start_date <= P.start_date
        ) AS cc
        GROUP BY
          cc.person_id,
          cc.event_id
        HAVING
          COUNT(cc.event_id) >= 1
      ) AS G
    ) AS AC
      ON AC.person_id = pe.person_id AND AC.event_id = pe.event_id
  ) AS QE
  WHERE
    QE.ordinal = 1
), cohort_inclusion_events AS (
  SELECT
    *
  FROM (
    SELECT
      0 AS inclusion_rule_id,
      1 AS rule_bit,
      g.person_id,
      g.event_id
    FROM (
      SELECT
        0 AS index_id,
        person_id,
        event_id
      FROM (
        SELECT
          E.person_id,
          E.event_id
        FROM cohort_qualified_events AS E
        INNER JOIN (
          SELECT
            0 AS index_id,
            cc.person_id,
            cc.event_id
          FROM (
            SELECT
              P.person_id,
              P.event_id,
              A.start_date AS count_value
            FROM cohort_qualified_events AS P
            JOIN (
              SELECT
                C.person_id,
                C.drug_exposure_id AS event_id,
                C.start_date,
                C.end_date,
                C.visit_occurrence_id AS visit_occurrence_id,
                C.start_date AS sort_date,
                C.drug_concept_id AS domain_concept_id
              FROM (
                SELECT
                  de.*,
                  de.drug_exposure_start_date AS start_date,
                  COALESCE(
                    de.drug_exposure_end_date,
                    CAST(DATEADD(DAY, de.days_supply, de.drug_exposure_start_date) AS DATE),
                    CAST(DATEADD(DAY, 1, de.drug_exposure_start_date) AS DATE)
                  ) AS end_date
                FROM cdm.drug_exposure AS de
                JOIN codesets AS cs
                  ON de.drug_concept_id = cs.concept_id AND cs.codeset_id = 0
              ) AS C
            ) AS A
              ON A.person_id = P.person_id
              AND A.start_date >= P.op_start_date
              AND A.start_date <= P.op_end_date
              AND A.start_date >= CAST(DATEADD(DAY, -365, P.start_date) AS DATE)
              AND A.start_date <= CAST(DATEADD(DAY, -1, P.start_date) AS DATE)
          ) AS cc
          GROUP BY
            cc.person_id,
            cc.event_id
          HAVING
            COUNT(DISTINCT cc.count_value) >= 2
          UNION ALL
          SELECT
            1 AS index_id,
            person_id,
            event_id
          FROM (
            SELECT
              E.person_id,
              E.event_id
            FROM cohort_qualified_events AS E
            INNER JOIN (
              SELECT
                0 AS index_id,
                E.person_id,
                E.event_id
              FROM cohort_qualified_events AS E
              JOIN cdm.person AS P
                ON P.person_id = E.person_id
              WHERE
                YEAR(E.start_date) - P.year_of_birth >= 40
              GROUP BY
                E.person_id,
                E.event_id
              UNION ALL
              SELECT
                1 AS index_id,
                E.person_id,
                E.event_id
              FROM cohort_qualified_events AS E
              JOIN cdm.person AS P
                ON P.person_id = E.person_id
              WHERE
                P.gender_concept_id IN (8532)
              GROUP BY
                E.person_id,
                E.event_id
            ) AS CQ
              ON E.person_id = CQ.person_id AND E.event_id = CQ.event_id
            GROUP BY
              E.person_id,
              E.event_id
            HAVING
              COUNT(CQ.index_id) = 2
          ) AS G
        ) AS CQ
          ON E.person_id = CQ.person_id AND E.event_id = CQ.event_id
        GROUP BY
          E.person_id,
          E.event_id
        HAVING
          COUNT(CQ.index_id) > 0
      ) AS G
    ) AS g
    UNION ALL
    SELECT
      1 AS inclusion_rule_id,
      2 AS rule_bit,
      g.person_id,
      g.event_id
    FROM (
      SELECT
        0 AS index_id,
        person_id,
        event_id
      FROM (
        SELECT
          0 AS index_id,
          p.person_id,
          p.event_id
        FROM cohort_qualified_events AS p
        LEFT JOIN (
          SELECT
            P.person_id,
            P.event_id
          FROM cohort_qualified_events AS P
          JOIN (
            SELECT
              C.person_id,
              C.condition_occurrence_id AS event_id,
              C.start_date,
              C.end_date,
              C.visit_occurrence_id AS visit_occurrence_id,
              C.start_date AS sort_date,
              C.condition_concept_id AS domain_concept_id
            FROM (
              SELECT
                co.*,
                co.condition_start_date AS start_date,
                COALESCE(co.condition_end_date, CAST(DATEADD(DAY, 1, co.condition_start_date) AS DATE)) AS end_date
              FROM cdm.condition_occurrence AS co
              JOIN codesets AS cs
                ON co.condition_concept_id = cs.concept_id AND cs.codeset_id = 1
            ) AS C
          ) AS A
            ON A.person_id = P.person_id
            AND A.start_date >= P.op_start_date
            AND A.start_date <= P.op_end_date
            AND A.start_date >= CAST(DATEADD(DAY, -365, P.start_date) AS DATE)
            AND A.start_date <= P.start_date
            AND A.end_date >= CAST(DATEADD(DAY, -365, P.start_date) AS DATE)
            AND A.end_date <= P.start_date
        ) AS cc
          ON p.person_id = cc.person_id AND p.event_id = cc.event_id
        GROUP BY
          p.person_id,
          p.event_id
        HAVING
          COUNT(cc.event_id) = 0
      ) AS G
    ) AS g
    UNION ALL
    SELECT
      2 AS inclusion_rule_id,
      4 AS rule_bit,
      g.person_id,
      g.event_id
    FROM (
      SELECT
        0 AS index_id,
        person_id,
        event_id
      FROM (
        SELECT
          0 AS index_id,
          p.person_id,
          p.event_id
        FROM cohort_qualified_events AS p
        LEFT JOIN (
          SELECT
            P.person_id,
            P.event_id
          FROM cohort_qualified_events AS P
          JOIN (
            SELECT
              C.person_id,
              C.person_id AS event_id,
              C.start_date,
              C.end_date,
              CAST(NULL AS BIGINT) AS visit_occurrence_id,
              C.start_date AS sort_date,
              COALESCE(C.cause_concept_id, 0) AS domain_concept_id
            FROM (
              SELECT
                d.*,
                d.death_date AS start_date,
                CAST(DATEADD(DAY, 1, d.death_date) AS DATE) AS end_date
              FROM cdm.death AS d
            ) AS C
          ) AS A
            ON A.person_id = P.person_id
            AND A.start_date >= P.op_start_date
            AND A.start_date <= P.op_end_date
            AND A.start_date >= CAST(DATEADD(DAY, -10000, P.start_date) AS DATE)
            AND A.start_date <= P.start_date
        ) AS cc
          ON p.person_id = cc.person_id AND p.event_id = cc.event_id
        GROUP BY
          p.person_id,
          p.event_id
        HAVING
          COUNT(cc.event_id) = 0
      ) AS G
    ) AS g
  ) AS ir
), cohort_masked_events AS (
  SELECT
    Q.person_id,
    Q.event_id,
    Q.start_date,
    Q.end_date,
    Q.op_start_date,
    Q.op_end_date,
    COALESCE(I.inclusion_rule_mask, 0) AS inclusion_rule_mask,
    COALESCE(I.rule_count, 0) AS rule_count,
    COALESCE(I.min_rule_id, 0) AS min_rule_id
  FROM cohort_qualified_events AS Q
  LEFT JOIN (
    SELECT
      IE.person_id,
      IE.event_id,
      SUM(IE.rule_bit) AS inclusion_rule_mask,
      COUNT(DISTINCT IE.inclusion_rule_id) AS rule_count,
      MIN(IE.inclusion_rule_id) AS min_rule_id
    FROM cohort_inclusion_events AS IE
    GROUP BY
      IE.person_id,
      IE.event_id
  ) AS I
    ON I.person_id = Q.person_id AND I.event_id = Q.event_id
), cohort_included_events AS (
  SELECT
    R.person_id,
    R.event_id,
    R.start_date,
    R.end_date,
    R.op_start_date,
    R.op_end_date
  FROM (
    SELECT
      MG.person_id,
      MG.event_id,
      MG.start_date,
      MG.end_date,
      MG.op_start_date,
      MG.op_end_date,
      ROW_NUMBER() OVER (
        PARTITION BY MG.person_id
        ORDER BY MG.start_date ASC NULLS FIRST, MG.event_id ASC NULLS FIRST
      ) AS ordinal
    FROM cohort_masked_events AS MG
    WHERE
      MG.inclusion_rule_mask = 7
  ) AS R
  WHERE
    R.ordinal = 1
), era_persons_6 AS (
  SELECT DISTINCT
    person_id
  FROM cohort_included_events
), era_drug_target_7 AS (
  SELECT
    *
  FROM (
    SELECT
      de.person_id,
      de.drug_exposure_start_date AS start_date,
      COALESCE(
        de.drug_exposure_end_date,
        CAST(DATEADD(DAY, de.days_supply, de.drug_exposure_start_date) AS DATE),
        CAST(DATEADD(DAY, 1, de.drug_exposure_start_date) AS DATE)
      ) AS end_date
    FROM cdm.drug_exposure AS de
    JOIN era_persons_6 AS p
      ON de.person_id = p.person_id
    JOIN codesets AS cs
      ON cs.codeset_id = 0 AND de.drug_concept_id = cs.concept_id
    UNION ALL
    SELECT
      de.person_id,
      de.drug_exposure_start_date AS start_date,
      COALESCE(
        de.drug_exposure_end_date,
        CAST(DATEADD(DAY, de.days_supply, de.drug_exposure_start_date) AS DATE),
        CAST(DATEADD(DAY, 1, de.drug_exposure_start_date) AS DATE)
      ) AS end_date
    FROM cdm.drug_exposure AS de
    JOIN era_persons_6 AS p
      ON de.person_id = p.person_id
    JOIN codesets AS cs
      ON cs.codeset_id = 0 AND de.drug_source_concept_id = cs.concept_id
    LEFT JOIN codesets AS cx
      ON cx.codeset_id = 0 AND de.drug_concept_id = cx.concept_id
    WHERE
      cx.concept_id IS NULL
  ) AS dt
), era_shifted_8 AS (
  SELECT
    person_id,
    start_date,
    CAST(DATEADD(DAY, 37, end_date) AS DATE) AS end_date
  FROM era_drug_target_7
), cohort_ends AS (
  SELECT
    *
  FROM (
    SELECT
      event_id,
      person_id,
      op_end_date AS end_date
    FROM cohort_included_events
    UNION ALL
    SELECT
      et.event_id,
      et.person_id,
      ERAS.era_end_date AS end_date
    FROM cohort_included_events AS et
    JOIN (
      SELECT
        person_id,
        start_date AS era_start_date,
        CAST(DATEADD(DAY, -30, end_date) AS DATE) AS era_end_date
      FROM (
        SELECT
          person_id,
          MIN(start_date) AS start_date,
          MAX(end_date) AS end_date
        FROM (
          SELECT
            person_id,
            start_date,
            end_date,
            SUM(is_start) OVER (
              PARTITION BY person_id
              ORDER BY start_date NULLS FIRST, is_start DESC NULLS LAST, end_date NULLS FIRST
              ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            ) AS group_idx
          FROM (
            SELECT
              person_id,
              start_date,
              end_date,
              CASE
                WHEN MAX(end_date) OVER (
                  PARTITION BY person_id
                  ORDER BY start_date NULLS FIRST, end_date NULLS FIRST
                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
                ) >= start_date
                THEN 0
                ELSE 1
              END AS is_start
            FROM (
              SELECT
                person_id,
                start_date,
                end_date AS end_date
              FROM era_shifted_8
            ) AS CR
          ) AS ST
        ) AS GR
        GROUP BY
          person_id,
          group_idx
      ) AS er
    ) AS ERAS
      ON ERAS.person_id = et.person_id
      AND et.start_date BETWEEN ERAS.era_start_date AND ERAS.era_end_date
    UNION ALL
    SELECT
      I.event_id,
      I.person_id,
      MIN(C.start_date) AS end_date
    FROM cohort_included_events AS I
    JOIN (
      SELECT
        C.person_id,
        C.condition_occurrence_id AS event_id,
        C.start_date,
        C.end_date,
        C.visit_occurrence_id AS visit_occurrence_id,
        C.start_date AS sort_date,
        C.condition_concept_id AS domain_concept_id
      FROM (
        SELECT
          co.*,
          co.condition_start_date AS start_date,
          COALESCE(co.condition_end_date, CAST(DATEADD(DAY, 1, co.condition_start_date) AS DATE)) AS end_date
        FROM cdm.condition_occurrence AS co
        JOIN codesets AS cs
          ON co.condition_concept_id = cs.concept_id AND cs.codeset_id = 1
      ) AS C
    ) AS C
      ON C.person_id = I.person_id
      AND C.start_date >= I.start_date
      AND C.start_date <= I.op_end_date
    GROUP BY
      I.event_id,
      I.person_id
  ) AS ce
), cohort_rows AS (
  SELECT
    I.person_id,
    I.start_date,
    MIN(CE.end_date) AS end_date
  FROM cohort_included_events AS I
  JOIN cohort_ends AS CE
    ON I.event_id = CE.event_id
    AND I.person_id = CE.person_id
    AND CE.end_date >= I.start_date
  GROUP BY
    I.person_id,
    I.event_id,
    I.start_date
), cohort_final AS (
  SELECT
    person_id,
    start_date,
    end_date
  FROM cohort_rows
), cohort_out AS (
  SELECT
    person_id AS subject_id,
    CASE WHEN start_date > CAST(:1 AS DATE) THEN start_date ELSE CAST(:1 AS DATE) END AS cohort_start_date,
    CASE WHEN end_date < CAST(:2 AS DATE) THEN end_date ELSE CAST(:2 AS DATE) END AS cohort_end_date
  FROM cohort_final
  WHERE
    CASE WHEN start_date > CAST(:1 AS DATE) THEN start_date ELSE CAST(:1 AS DATE) END <= CASE WHEN end_date < CAST(:2 AS DATE) THEN end_date ELSE CAST(:2 AS DATE) END
), cohort_mask_counts AS (
  SELECT
    *
  FROM (
    SELECT
      0 AS mode_id,
      inclusion_rule_mask,
      COUNT(*) AS person_count
    FROM cohort_masked_events
    GROUP BY
      inclusion_rule_mask
    UNION ALL
    SELECT
      1 AS mode_id,
      inclusion_rule_mask,
      COUNT(*) AS person_count
    FROM (
      SELECT
        inclusion_rule_mask,
        ROW_NUMBER() OVER (
          PARTITION BY person_id
          ORDER BY rule_count DESC NULLS LAST, min_rule_id ASC NULLS FIRST, start_date ASC NULLS FIRST, event_id ASC NULLS FIRST
        ) AS rank_value
      FROM cohort_masked_events
    ) AS B
    WHERE
      B.rank_value = 1
    GROUP BY
      inclusion_rule_mask
  ) AS mc
)
SELECT
  subject_id,
  cohort_start_date,
  cohort_end_date
FROM cohort_out
